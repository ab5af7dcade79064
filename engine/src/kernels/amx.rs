//! Matrix multiply on Intel AMX tiles in bf16 with f32 accumulation: `C (m, n) = A (m, k) · B (k, n)`,
//! A in f32 (converted per call), B a frozen weight packed once.
//!
//! Why our own kernel: training is ~60% frozen-weight matmuls, and candle's CPU matmul (the gemm
//! crate) reaches ~80 GFLOP/s on 2 Sapphire Rapids cores where AMX bf16 does over 1 TFLOP/s. No crate
//! offers AMX on stable Rust (std's AMX intrinsics are nightly-only), so the tile instructions are
//! written as inline assembly. Used only where the CPU has AMX-BF16 and the kernel grants the process
//! the tile state (`arch_prctl`); everywhere else the f32 path runs unchanged.
//!
//! bf16 keeps f32's range with an 8-bit mantissa; products accumulate in f32, as mixed-precision
//! training does on GPUs. `engine/tests/amx.rs` checks results against an f64 reference.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::threads::SendPtr;

/// Rows of C per task (two 16-row tiles) and columns per tile pair (two 16-column tiles).
const MB: usize = 32;
const NB: usize = 32;
/// Inner-dimension step of one tile multiply: 16 pairs of bf16 (64 bytes per tile row).
const KB: usize = 32;

/// True when AMX-BF16 can run in this process. Set `DISTILL_NO_AMX=1` to force the f32 path
/// (benchmarks compare the two; tests run both).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var_os("DISTILL_NO_AMX").is_none() && cpu_has_amx_bf16() && request_tile_state())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU.
    let (max, leaf7) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0)) };
    // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    max >= 7 && leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

/// Linux hands out the 8 KiB tile register state only on request, once per process; without it the
/// first tile instruction raises SIGILL.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall asking the kernel for AMX tile state; no memory is passed.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// f32 -> bf16, rounding to nearest even (what the hardware's own conversion does); NaN stays NaN.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// B (k, n) in bf16, in the layout a tile load wants: for each block of 16 columns, `k/2` rows of
/// 16 (even, odd) pairs. k is padded to a multiple of 32 and n to a multiple of 32 with zeros.
#[derive(Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    kp: usize,
    np: usize,
    data: Vec<u16>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl PackedB {
    /// Packs `b`, a row-major (rows, cols) f32 matrix, as B = b (`transpose` false: k = rows) or
    /// B = bᵀ (`transpose` true: k = cols), so a weight `W (out, in)` serves both `x Wᵀ` and `g W`.
    pub fn new(b: &[f32], rows: usize, cols: usize, transpose: bool) -> Self {
        assert_eq!(b.len(), rows * cols);
        let (k, n) = if transpose { (cols, rows) } else { (rows, cols) };
        let (kp, np) = (k.div_ceil(KB) * KB, n.div_ceil(NB) * NB);
        let mut data = vec![0u16; kp * np];
        data.par_chunks_mut(kp * 16).enumerate().for_each(|(nb, block)| {
            for kk in 0..k {
                for j in 0..16 {
                    let col = nb * 16 + j;
                    if col < n {
                        let v = if transpose { b[col * cols + kk] } else { b[kk * cols + col] };
                        block[(kk / 2) * 32 + j * 2 + kk % 2] = bf16(v);
                    }
                }
            }
        });
        Self { k, n, kp, np, data }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// `c = a · B` for `a (m, k)` row-major f32; returns `c (m, n)` row-major. Requires [`available`].
pub fn matmul(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    assert!(available(), "amx::matmul called without AMX");
    assert_eq!(a.len(), m * b.k);
    let (k, kp, n) = (b.k, b.kp, b.n);
    let mp = m.div_ceil(MB) * MB;
    // A in bf16, rows padded to whole tiles and k to whole tile steps (zeros add nothing).
    let mut ap = vec![0u16; mp * kp];
    ap.par_chunks_mut(kp).zip(a.par_chunks(k)).for_each(|(dst, src)| {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16(s);
        }
    });
    // Every element is written below (each panel and column block by one task), so no zeroing.
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    // One task per 32-row panel and group of column tiles: enough tasks to balance the threads, each
    // reusing its A panel across the group's B blocks while they stay in L2.
    let groups = (b.np / NB).div_ceil(8);
    let cols_per_group = 8 * NB;
    let c_ptr = SendPtr(c.as_mut_ptr());
    (0..mp / MB).into_par_iter().flat_map(|p| (0..groups).into_par_iter().map(move |g| (p, g))).for_each(|(p, g)| {
        let c_ptr = &c_ptr;
        let mut tile = [0f32; MB * NB];
        let a_panel = &ap[p * MB * kp..(p + 1) * MB * kp];
        let n_end = ((g + 1) * cols_per_group).min(b.np);
        for n0 in (g * cols_per_group..n_end).step_by(NB) {
            let b0 = &b.data[(n0 / 16) * kp * 16..];
            let b1 = &b.data[(n0 / 16 + 1) * kp * 16..];
            // SAFETY: available() checked AMX and the tile permission; pointers cover kp columns of A
            // (32 rows) and kp/2 rows of 32 u16 for each B block; tile holds 32 x 32 f32.
            unsafe { kernel_32x32(a_panel.as_ptr(), kp, b0.as_ptr(), b1.as_ptr(), tile.as_mut_ptr()) };
            let rows = MB.min(m - p * MB);
            let cols = NB.min(n - n0.min(n));
            for r in 0..rows {
                let dst = (p * MB + r) * n + n0;
                // SAFETY: each (panel, column block) is written by exactly one task.
                unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr().add(r * NB), c_ptr.0.add(dst), cols) };
            }
        }
    });
    // SAFETY: the tasks above wrote all m x n elements.
    unsafe { c.set_len(m * n) };
    c
}

/// Tile configuration (palette 1): every tile used is 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// C (32 x 32 f32, row stride 32) = A (32 rows x kp bf16, row stride kp) · [B0 | B1] (two packed
/// 16-column blocks). tmm0-3 accumulate the four 16x16 quarters, tmm4-5 hold A, tmm6-7 hold B.
///
/// # Safety
/// [`available`] is true (AMX-BF16 and the tile state granted to this thread's process); `a` points to
/// 32 rows of `kp` bf16, `b0` and `b1` to packed blocks of `kp` rows, `c` to 32 x 32 writable floats.
#[cfg(target_arch = "x86_64")]
unsafe fn kernel_32x32(a: *const u16, kp: usize, b0: *const u16, b1: *const u16, c: *mut f32) {
    use std::arch::asm;
    let a_stride = kp * 2;
    let a1 = a.add(16 * kp);
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
    for s in 0..kp / KB {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a.add(s * KB),
            a1 = in(reg) a1.add(s * KB),
            b0 = in(reg) b0.add(s * 16 * 32),
            b1 = in(reg) b1.add(s * 16 * 32),
            sa = in(reg) a_stride,
            sb = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
    let sc = NB * 4;
    asm!(
        "tilestored [{c0} + {sc}*1], tmm0",
        "tilestored [{c1} + {sc}*1], tmm1",
        "tilestored [{c2} + {sc}*1], tmm2",
        "tilestored [{c3} + {sc}*1], tmm3",
        "tilerelease",
        c0 = in(reg) c,
        c1 = in(reg) c.add(16),
        c2 = in(reg) c.add(16 * NB),
        c3 = in(reg) c.add(16 * NB + 16),
        sc = in(reg) sc,
        options(nostack),
    );
}

/// Never called: [`available`] is false off x86_64.
///
/// # Safety
/// None needed; it panics.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_32x32(_: *const u16, _: usize, _: *const u16, _: *const u16, _: *mut f32) {
    unreachable!("available() is false off x86_64")
}
