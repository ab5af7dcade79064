//! The weight layout the kernels read: codes in blocks of 16 rows x 32 columns with an f16 scale and
//! offset per row and block, built from the file's Q4_1 / Q8_0 blocks or by quantizing f32 weights.

use super::buffer::Buffer;
use super::{BLOCK, ROWS};

/// Width of the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// One byte per weight (0..=255).
    U8,
    /// Two weights per byte (0..=15), half the memory; unpacked in registers.
    U4,
}

impl Codes {
    /// Bytes of one block of 16 rows x 32 columns.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Codes::U8 => ROWS * BLOCK,
            Codes::U4 => ROWS * BLOCK / 2,
        }
    }
}

/// A weight `W (n, k)` for `x Wᵀ`, in blocks of 16 rows x 32 columns.
///
/// U8 block: 8 runs of 64 bytes; run `i` holds, for rows 0..16, the 4 codes of columns `4i..4i+4`
/// (the operand layout of `vpdpbusd`). U4 block: 4 runs; run `j` holds run `j` in its low nibbles and
/// run `j + 4` in its high ones. Scales `d` and offsets `m`: 16 f16 per block, in the same order (f16 as
/// in the file: generating one token reads every weight, and f32 scales were a third of the bytes).
#[derive(Clone)]
pub struct QuantWeight {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) blocks: usize,
    pub(super) groups: usize,
    pub(super) codes: Codes,
    pub(super) data: Buffer<u8>,
    pub(super) d: Buffer<u16>,
    pub(super) m: Buffer<u16>,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeight {{ n: {}, k: {}, codes: {:?} }}", self.n, self.k, self.codes)
    }
}

impl QuantWeight {
    /// Lengths of `data` and of `d` (= of `m`) for a `(n, k)` weight; None for a shape the kernels
    /// cannot take (empty, `k` not a multiple of 32, or too large to address).
    pub fn part_lengths(n: usize, k: usize, codes: Codes) -> Option<(usize, usize)> {
        if n == 0 || k == 0 || !k.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = n.div_ceil(ROWS).checked_mul(k / BLOCK)?;
        Some((blocks.checked_mul(codes.block_bytes())?, blocks.checked_mul(ROWS)?))
    }

    fn empty(n: usize, k: usize, codes: Codes) -> Self {
        assert!(k.is_multiple_of(BLOCK), "inner dimension {k} is not a multiple of {BLOCK}");
        let (bytes, scales) = Self::part_lengths(n, k, codes).expect("a weight shape the kernels take");
        let (data, d, m) = (vec![0; bytes].into(), vec![0; scales].into(), vec![0; scales].into());
        Self { n, k, blocks: k / BLOCK, groups: n.div_ceil(ROWS), codes, data, d, m }
    }

    /// A weight from its laid-out parts (a prepared-weights file); None unless their lengths are
    /// exactly those of a `(n, k)` weight with these codes, which is all the kernels rely on.
    pub fn from_parts(
        n: usize,
        k: usize,
        codes: Codes,
        data: Buffer<u8>,
        d: Buffer<u16>,
        m: Buffer<u16>,
    ) -> Option<Self> {
        let (bytes, scales) = Self::part_lengths(n, k, codes)?;
        (data.len() == bytes && d.len() == scales && m.len() == scales).then(|| Self {
            n,
            k,
            blocks: k / BLOCK,
            groups: n.div_ceil(ROWS),
            codes,
            data,
            d,
            m,
        })
    }

    /// The laid-out parts (codes, scales, offsets), as [`QuantWeight::from_parts`] takes them.
    pub fn parts(&self) -> (&[u8], &[u16], &[u16]) {
        (&self.data, &self.d, &self.m)
    }

    /// True when the weight reads a shared memory-mapped file rather than memory of its own.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    /// Code `u` of row `r`, column `c`.
    fn put(&mut self, r: usize, c: usize, u: u8) {
        let (g, row, b, kk) = (r / ROWS, r % ROWS, c / BLOCK, c % BLOCK);
        let base = (g * self.blocks + b) * self.codes.block_bytes();
        let (run, lane) = (kk / 4, row * 4 + kk % 4);
        match self.codes {
            Codes::U8 => self.data.make_mut()[base + run * 64 + lane] = u,
            Codes::U4 => self.data.make_mut()[base + (run % 4) * 64 + lane] |= (u & 0xf) << (4 * (run / 4)),
        }
    }

    /// Index into `d` and `m` of row `r`'s scale for block `b`.
    pub(super) fn scale_index(&self, r: usize, b: usize) -> usize {
        ((r / ROWS) * self.blocks + b) * ROWS + r % ROWS
    }

    fn set_scale(&mut self, r: usize, b: usize, d: f32, m: f32) {
        let i = self.scale_index(r, b);
        self.d.make_mut()[i] = half::f16::from_f32(d).to_bits();
        self.m.make_mut()[i] = half::f16::from_f32(m).to_bits();
    }

    pub(super) fn code(&self, r: usize, c: usize) -> u8 {
        let (g, row, b, kk) = (r / ROWS, r % ROWS, c / BLOCK, c % BLOCK);
        let base = (g * self.blocks + b) * self.codes.block_bytes();
        let (run, lane) = (kk / 4, row * 4 + kk % 4);
        match self.codes {
            Codes::U8 => self.data[base + run * 64 + lane],
            Codes::U4 => (self.data[base + (run % 4) * 64 + lane] >> (4 * (run / 4))) & 0xf,
        }
    }

    /// Quantizes a row-major f32 `w (n, k)` to 8 bits per weight, symmetric per block of 32, exactly as
    /// ggml's Q8_0 does (`d = max|w| / 127` stored in f16, `code = round(w / d) + 128`).
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let mut q = Self::empty(n, k, Codes::U8);
        for r in 0..n {
            for b in 0..k / BLOCK {
                let block = &w[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (i, v) in block.iter().enumerate() {
                    q.put(r, b * BLOCK + i, ((v * id).round().clamp(-127.0, 127.0) as i32 + 128) as u8);
                }
                let d = half::f16::from_f32(d).to_f32();
                q.set_scale(r, b, d, -128.0 * d);
            }
        }
        q
    }

    /// ggml `Q8_0` blocks (f16 scale, 32 int8) of a `(n, k)` tensor, taken over exactly.
    pub fn from_q8_0(raw: &[u8], n: usize, k: usize) -> Self {
        const SIZE: usize = 2 + BLOCK;
        assert_eq!(raw.len(), n * k / BLOCK * SIZE, "Q8_0 data size");
        let mut q = Self::empty(n, k, Codes::U8);
        for (i, blk) in raw.chunks_exact(SIZE).enumerate() {
            let (r, b) = (i / q.blocks, i % q.blocks);
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            for (j, &c) in blk[2..].iter().enumerate() {
                q.put(r, b * BLOCK + j, (c as i8 as i32 + 128) as u8);
            }
            q.set_scale(r, b, d, -128.0 * d);
        }
        q
    }

    /// ggml `Q4_1` blocks (f16 scale and minimum, 16 bytes of nibbles: byte `j` holds weights `j` and
    /// `j + 16`) of a `(n, k)` tensor, taken over exactly.
    pub fn from_q4_1(raw: &[u8], n: usize, k: usize) -> Self {
        const SIZE: usize = 4 + BLOCK / 2;
        assert_eq!(raw.len(), n * k / BLOCK * SIZE, "Q4_1 data size");
        let mut q = Self::empty(n, k, Codes::U4);
        for (i, blk) in raw.chunks_exact(SIZE).enumerate() {
            let (r, b) = (i / q.blocks, i % q.blocks);
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let m = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            for (j, &c) in blk[4..].iter().enumerate() {
                q.put(r, b * BLOCK + j, c & 0xf);
                q.put(r, b * BLOCK + j + 16, c >> 4);
            }
            q.set_scale(r, b, d, m);
        }
        q
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn codes(&self) -> Codes {
        self.codes
    }

    /// Row `r` in f32 (embedding lookups of a tied head).
    pub fn row(&self, r: usize) -> Vec<f32> {
        (0..self.k)
            .map(|c| {
                let i = self.scale_index(r, c / BLOCK);
                let f = |h: u16| half::f16::from_bits(h).to_f32();
                f(self.d[i]) * self.code(r, c) as f32 + f(self.m[i])
            })
            .collect()
    }

    /// The whole weight in f32, row-major `(n, k)`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.n).flat_map(|r| self.row(r)).collect()
    }
}
