use distill_engine::amx;
use std::time::Instant;
fn main() {
    println!("amx available: {}", amx::available());
    let mut seed = 1u64;
    let mut rnd = || { seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5 };
    for &(m, k, n) in &[(37usize, 70usize, 50usize), (1064, 576, 576), (1064, 576, 1536), (1064, 1536, 576), (1064, 576, 192), (1064, 192, 576), (128, 576, 1536)] {
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect(); // (out=n, in=k)
        let pb = amx::PackedB::new(&w, n, k, true);
        let c = amx::matmul(&a, m, &pb);
        let mut maxerr = 0f64; let mut maxref = 0f64;
        for i in (0..m).step_by(7) { for j in 0..n {
            let r: f64 = (0..k).map(|t| a[i * k + t] as f64 * w[j * k + t] as f64).sum();
            maxerr = maxerr.max((r - c[i * n + j] as f64).abs()); maxref = maxref.max(r.abs());
        }}
        let it = 20; let t = Instant::now();
        for _ in 0..it { std::hint::black_box(amx::matmul(&a, m, &pb)); }
        let s = t.elapsed().as_secs_f64() / it as f64;
        println!("{m}x{k}x{n}: {:.1} GFLOP/s  max err {maxerr:.2e} (max |ref| {maxref:.2})", 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}
