//! The fast f32 batch norm (+ fused ReLU), ReLU, max-pool and copy of the CPU backend
//! (src/cpu/fast_norm.rs) against the plain references (src/cpu/batch_norm.rs,
//! src/cpu/max_pool.rs): in f32, and against the references run in f64 (the fast statistics
//! accumulate in f64, so they should be at least as close to the f64 result as the f32
//! reference is). Also: bitwise determinism across runs and thread counts, views at non-zero
//! offsets through the `Cpu` backend, and outputs sharing one buffer.
mod common;

use common::*;
use fewshot::cpu::{batch_norm, fast_norm, max_pool, Cpu};
use fewshot::ops::{Backend, BatchNorm, NormShape, PoolShape};
use rand_chacha::ChaCha8Rng;

fn ns(batch: usize, channels: usize, spatial: usize) -> NormShape {
    NormShape {
        batch,
        channels,
        spatial,
    }
}

/// Batch 1, odd spatial sizes (1, 35 = 5x7, 169 = 13x13), channels 1/3/64, and the Conv-4
/// layer-1 size at batch 8 ([8, 64, 28x28]).
fn norm_shapes() -> Vec<NormShape> {
    vec![
        ns(1, 1, 1),
        ns(1, 3, 35),
        ns(2, 1, 169),
        ns(5, 3, 1),
        ns(3, 64, 9),
        ns(1, 64, 49),
        ns(4, 3, 169),
        ns(8, 64, 784),
    ]
}

fn settings(relu: bool) -> BatchNorm {
    BatchNorm {
        eps: 1e-5,
        momentum: 0.1,
        relu,
    }
}

/// Random data with a per-tensor offset, so the mean is not ~0 (the variance pass matters).
fn data(rng: &mut ChaCha8Rng, len: usize, offset: f32, scale: f32) -> Vec<f32> {
    random(rng, len)
        .into_iter()
        .map(|v| offset + scale * v)
        .collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Fast vs f32 reference within F32_TOLERANCE, and the errors of both against the f64
/// reference printed (the fast one also bounded; returns it).
#[track_caller]
fn check(what: &str, fast: &[f32], ref32: &[f32], ref64: &[f64]) -> f64 {
    assert_close(
        &format!("{what} (fast vs f32 reference)"),
        fast,
        ref32,
        F32_TOLERANCE,
    );
    let r64 = to32(ref64);
    let e_fast = max_rel_error(fast, &r64);
    let e_ref = max_rel_error(ref32, &r64);
    eprintln!("{what}: vs f64 reference: fast {e_fast:.2e}, f32 reference {e_ref:.2e}");
    assert!(
        e_fast <= F32_TOLERANCE,
        "{what}: fast vs f64 reference {e_fast:.3e}"
    );
    e_fast
}

struct TrainOut<T> {
    output: Vec<T>,
    mean: Vec<T>,
    inv_std: Vec<T>,
    rm: Vec<T>,
    rv: Vec<T>,
}

struct TrainIn {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn train_inputs(rng: &mut ChaCha8Rng, s: &NormShape) -> TrainIn {
    let c = s.channels;
    TrainIn {
        x: data(rng, s.len(), 0.7, 2.0),
        gamma: data(rng, c, 1.0, 0.5),
        beta: data(rng, c, 0.0, 0.3),
        rm: data(rng, c, 0.0, 0.5),
        rv: data(rng, c, 1.0, 0.5),
    }
}

fn train_ref<T: num_traits::Float>(
    s: &NormShape,
    p: &BatchNorm,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    rm: &[T],
    rv: &[T],
) -> TrainOut<T> {
    let c = s.channels;
    let mut o = TrainOut {
        output: vec![T::nan(); s.len()],
        mean: vec![T::nan(); c],
        inv_std: vec![T::nan(); c],
        rm: rm.to_vec(),
        rv: rv.to_vec(),
    };
    batch_norm::batch_norm_train(
        s,
        p,
        x,
        gamma,
        beta,
        &mut o.output,
        &mut o.mean,
        &mut o.inv_std,
        &mut o.rm,
        &mut o.rv,
    );
    o
}

fn train_fast(s: &NormShape, p: &BatchNorm, i: &TrainIn) -> TrainOut<f32> {
    let c = s.channels;
    let mut o = TrainOut {
        output: vec![f32::NAN; s.len()],
        mean: vec![f32::NAN; c],
        inv_std: vec![f32::NAN; c],
        rm: i.rm.clone(),
        rv: i.rv.clone(),
    };
    fast_norm::batch_norm_train(
        s,
        p,
        &i.x,
        &i.gamma,
        &i.beta,
        &mut o.output,
        &mut o.mean,
        &mut o.inv_std,
        &mut o.rm,
        &mut o.rv,
    );
    o
}

fn train_ref64(s: &NormShape, p: &BatchNorm, i: &TrainIn) -> TrainOut<f64> {
    train_ref(
        s,
        p,
        &to64(&i.x),
        &to64(&i.gamma),
        &to64(&i.beta),
        &to64(&i.rm),
        &to64(&i.rv),
    )
}

#[test]
fn batch_norm_train_fast_matches_reference() {
    let mut rng = rng(1);
    let mut worst = 0.0f64;
    for s in norm_shapes() {
        for relu in [false, true] {
            let p = settings(relu);
            let i = train_inputs(&mut rng, &s);
            let fast = train_fast(&s, &p, &i);
            let r32 = train_ref(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv);
            let r64 = train_ref64(&s, &p, &i);
            let tag = format!("batch_norm_train {s:?} relu={relu}");
            for (what, f, a, b) in [
                ("output", &fast.output, &r32.output, &r64.output),
                ("saved_mean", &fast.mean, &r32.mean, &r64.mean),
                ("saved_inv_std", &fast.inv_std, &r32.inv_std, &r64.inv_std),
                ("running_mean", &fast.rm, &r32.rm, &r64.rm),
                ("running_var", &fast.rv, &r32.rv, &r64.rv),
            ] {
                worst = worst.max(check(&format!("{tag} {what}"), f, a, b));
            }
        }
    }
    eprintln!("batch_norm_train: worst fast vs f64 reference {worst:.2e}");
}

#[test]
fn batch_norm_eval_fast_matches_reference() {
    let mut rng = rng(2);
    for s in norm_shapes() {
        for relu in [false, true] {
            let p = settings(relu);
            let i = train_inputs(&mut rng, &s);
            let mut fast = vec![f32::NAN; s.len()];
            fast_norm::batch_norm_eval(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv, &mut fast);
            let mut r32 = vec![f32::NAN; s.len()];
            batch_norm::batch_norm_eval(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv, &mut r32);
            let mut r64 = vec![f64::NAN; s.len()];
            batch_norm::batch_norm_eval(
                &s,
                &p,
                &to64(&i.x),
                &to64(&i.gamma),
                &to64(&i.beta),
                &to64(&i.rm),
                &to64(&i.rv),
                &mut r64,
            );
            check(
                &format!("batch_norm_eval {s:?} relu={relu}"),
                &fast,
                &r32,
                &r64,
            );
        }
    }
}

struct BackIn {
    train: TrainIn,
    /// Forward results of the f32 reference (output for the ReLU mask, saved statistics).
    fwd: TrainOut<f32>,
    dy: Vec<f32>,
}

fn back_inputs(rng: &mut ChaCha8Rng, s: &NormShape, p: &BatchNorm) -> BackIn {
    let train = train_inputs(rng, s);
    let fwd = train_ref(
        s,
        p,
        &train.x,
        &train.gamma,
        &train.beta,
        &train.rm,
        &train.rv,
    );
    let dy = data(rng, s.len(), 0.1, 1.0);
    BackIn { train, fwd, dy }
}

/// (grad_input, grad_gamma, grad_beta) of the reference, in T.
fn back_ref<T: num_traits::Float>(
    s: &NormShape,
    p: &BatchNorm,
    conv: impl Fn(&[f32]) -> Vec<T>,
    b: &BackIn,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = s.channels;
    let (mut dx, mut dg, mut db) = (
        vec![T::nan(); s.len()],
        vec![T::nan(); c],
        vec![T::nan(); c],
    );
    batch_norm::batch_norm_backward(
        s,
        p,
        &conv(&b.train.x),
        &conv(&b.fwd.output),
        &conv(&b.dy),
        &conv(&b.train.gamma),
        &conv(&b.fwd.mean),
        &conv(&b.fwd.inv_std),
        &mut dx,
        &mut dg,
        &mut db,
    );
    (dx, dg, db)
}

fn back_fast(s: &NormShape, p: &BatchNorm, b: &BackIn) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = s.channels;
    let (mut dx, mut dg, mut db) = (
        vec![f32::NAN; s.len()],
        vec![f32::NAN; c],
        vec![f32::NAN; c],
    );
    fast_norm::batch_norm_backward(
        s,
        p,
        &b.train.x,
        &b.fwd.output,
        &b.dy,
        &b.train.gamma,
        &b.fwd.mean,
        &b.fwd.inv_std,
        &mut dx,
        &mut dg,
        &mut db,
    );
    (dx, dg, db)
}

#[test]
fn batch_norm_backward_fast_matches_reference() {
    let mut rng = rng(3);
    let mut worst = 0.0f64;
    for s in norm_shapes() {
        for relu in [false, true] {
            let p = settings(relu);
            let b = back_inputs(&mut rng, &s, &p);
            let fast = back_fast(&s, &p, &b);
            let r32 = back_ref(&s, &p, |v| v.to_vec(), &b);
            let r64 = back_ref(&s, &p, to64, &b);
            let tag = format!("batch_norm_backward {s:?} relu={relu}");
            for (what, f, a, r) in [
                ("grad_input", &fast.0, &r32.0, &r64.0),
                ("grad_gamma", &fast.1, &r32.1, &r64.1),
                ("grad_beta", &fast.2, &r32.2, &r64.2),
            ] {
                worst = worst.max(check(&format!("{tag} {what}"), f, a, r));
            }
        }
    }
    eprintln!("batch_norm_backward: worst fast vs f64 reference {worst:.2e}");
}

/// Special values ReLU must treat as the reference does: NaN and -0 give +0.
fn relu_input(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut x = random(rng, len);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 97 {
            0 => *v = f32::NAN,
            1 => *v = -0.0,
            2 => *v = 0.0,
            _ => {}
        }
    }
    x
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn relu_fast_is_bitwise_the_reference() {
    let mut rng = rng(4);
    // Around the parallel chunk size (2^14) and one Conv-4 layer-1 map at batch 8.
    for len in [1, 5, 16383, 16384, 16385, 40000, 8 * 64 * 784] {
        let x = relu_input(&mut rng, len);
        let (mut fast, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        fast_norm::relu_forward(&x, &mut fast);
        batch_norm::relu_forward(&x, &mut want);
        assert_eq!(bits(&fast), bits(&want), "relu_forward, len {len}");

        let y = want;
        let dy = random(&mut rng, len);
        let (mut fast, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        fast_norm::relu_backward(&y, &dy, &mut fast);
        batch_norm::relu_backward(&y, &dy, &mut want);
        assert_eq!(bits(&fast), bits(&want), "relu_backward, len {len}");
        // It did something: about half the gradient passes, the rest is zero.
        let passed = fast.iter().filter(|&&g| g != 0.0).count();
        assert!(len < 100 || (passed > len / 3 && passed < 2 * len / 3));
    }
}

fn ps(batch: usize, channels: usize, height: usize, width: usize) -> PoolShape {
    PoolShape {
        batch,
        channels,
        height,
        width,
    }
}

/// Batch 1, odd heights and widths (dropped last row/column), 1-pixel sides (no windows),
/// channels 1/3/64, the Conv-4 sizes 28/14/7/3 at batch 8. Rows of 1-3 windows (the fast
/// version's scalar path), 8 windows (whole groups of 4 only), 5, 7 and 14 windows (groups
/// plus a zero-padded partial group).
fn pool_shapes() -> Vec<PoolShape> {
    vec![
        ps(1, 1, 2, 2),
        ps(1, 3, 5, 7),
        ps(2, 1, 4, 6),
        ps(3, 3, 7, 4),
        ps(1, 1, 1, 5),
        ps(2, 3, 6, 1),
        ps(2, 3, 9, 16),
        ps(3, 1, 5, 11),
        ps(8, 64, 28, 28),
        ps(8, 64, 14, 14),
        ps(8, 64, 7, 7),
        ps(8, 64, 3, 3),
    ]
}

/// Values on a coarse grid (many ties inside windows), with some -0/+0 and NaN: the "first
/// maximum" rule decides every one of those, and the fast version must decide the same.
fn pool_input(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut x: Vec<f32> = random(rng, len)
        .into_iter()
        .map(|v| (v * 3.0).round())
        .collect();
    for (i, v) in x.iter_mut().enumerate() {
        match i % 53 {
            0 => *v = f32::NAN,
            1 | 7 => *v = -0.0,
            _ => {}
        }
    }
    x
}

#[test]
fn max_pool_fast_is_bitwise_the_reference() {
    let mut rng = rng(5);
    for s in pool_shapes() {
        let x = pool_input(&mut rng, s.input_len());
        let mut fast = vec![f32::NAN; s.output_len()];
        let mut want = vec![f32::NAN; s.output_len()];
        fast_norm::max_pool_forward(&s, &x, &mut fast);
        max_pool::max_pool_forward(&s, &x, &mut want);
        assert_eq!(bits(&fast), bits(&want), "max_pool_forward {s:?}");

        let dy = random(&mut rng, s.output_len());
        let mut fast = vec![f32::NAN; s.input_len()];
        let mut want = vec![f32::NAN; s.input_len()];
        fast_norm::max_pool_backward(&s, &x, &dy, &mut fast);
        max_pool::max_pool_backward(&s, &x, &dy, &mut want);
        assert_eq!(bits(&fast), bits(&want), "max_pool_backward {s:?}");
        // Each window routes its gradient to exactly one input.
        let routed = fast.iter().filter(|&&g| g != 0.0).count();
        let nonzero = dy.iter().filter(|&&g| g != 0.0).count();
        assert_eq!(routed, nonzero, "max_pool_backward {s:?}: routed gradients");
        eprintln!("max_pool {s:?}: bitwise equal");
    }
}

/// Runs every fast op on one shape; returns all outputs, for bitwise comparison.
fn run_all(seed: u64) -> Vec<Vec<u32>> {
    let mut rng = rng(seed);
    let s = ns(8, 64, 784);
    let p = settings(true);
    let i = train_inputs(&mut rng, &s);
    let t = train_fast(&s, &p, &i);
    let mut ev = vec![f32::NAN; s.len()];
    fast_norm::batch_norm_eval(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv, &mut ev);
    let b = back_inputs(&mut rng, &s, &p);
    let (dx, dg, db) = back_fast(&s, &p, &b);
    let pool = ps(8, 64, 28, 28);
    let mut y = vec![f32::NAN; pool.output_len()];
    fast_norm::max_pool_forward(&pool, &t.output, &mut y);
    let mut gx = vec![f32::NAN; pool.input_len()];
    fast_norm::max_pool_backward(&pool, &t.output, &y, &mut gx);
    let fused = fused_train(&pool, &p, &i);
    let (mut fdx, mut fdg, mut fdb) = (vec![f32::NAN; s.len()], vec![0.0; 64], vec![0.0; 64]);
    let mut scratch = vec![f32::NAN; s.len()];
    fast_norm::pool_batch_norm_backward(
        &pool,
        &p,
        &i.x,
        &y,
        &i.gamma,
        &i.beta,
        &t.mean,
        &t.inv_std,
        &mut scratch,
        &mut fdx,
        &mut fdg,
        &mut fdb,
    );
    [
        t.output,
        t.mean,
        t.inv_std,
        t.rm,
        t.rv,
        ev,
        dx,
        dg,
        db,
        y,
        gx,
        fused.output,
        fdx,
        fdg,
        fdb,
    ]
    .iter()
    .map(|v| bits(v))
    .collect()
}

#[test]
fn fast_ops_are_deterministic_across_runs_and_thread_counts() {
    let first = run_all(6);
    assert_eq!(first, run_all(6), "two runs differ");
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let other = pool.install(|| run_all(6));
        assert_eq!(first, other, "results differ with {threads} threads");
    }
    // And the comparison can fail: another seed gives other results.
    assert_ne!(first, run_all(7));
}

/// A flat buffer holding `parts` at the given offsets (NaN elsewhere), and views of them.
fn packed(
    cpu: &Cpu,
    parts: &[(&[f32], usize)],
) -> (fewshot::cpu::CpuTensor, Vec<fewshot::cpu::CpuTensor>) {
    let len = parts.iter().map(|(d, o)| o + d.len()).max().unwrap() + 5;
    let mut flat = vec![f32::NAN; len];
    for (d, o) in parts {
        flat[*o..*o + d.len()].copy_from_slice(d);
    }
    let buf = cpu.tensor_from(&flat);
    let views = parts
        .iter()
        .map(|(d, o)| cpu.view(&buf, *o, d.len()))
        .collect();
    (buf, views)
}

#[test]
fn cpu_backend_batch_norm_and_pool_on_views_and_shared_output_buffers() {
    let cpu = Cpu::new();
    let mut rng = rng(8);
    for s in [ns(3, 3, 35), ns(8, 64, 49)] {
        let c = s.channels;
        let p = settings(true);
        let i = train_inputs(&mut rng, &s);
        let want = train_ref(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv);
        // Inputs as views at odd offsets of one buffer.
        let (_inputs, v) = packed(
            &cpu,
            &[
                (&i.x, 3),
                (&i.gamma, 3 + s.len() + 2),
                (&i.beta, 7 + s.len() + c),
            ],
        );
        let (x, gamma, beta) = (&v[0], &v[1], &v[2]);
        // Outputs: the saved statistics share one buffer, the running statistics another
        // (in reversed order), the output is a view of a third.
        let nan_c = vec![f32::NAN; c];
        let (_stats, sv) = packed(&cpu, &[(&nan_c, 1), (&nan_c, 1 + c)]);
        let (_running, rvw) = packed(&cpu, &[(&i.rv, 2), (&i.rm, 2 + c + 1)]);
        let (rv, rm) = (&rvw[0], &rvw[1]);
        let (_out, ov) = packed(&cpu, &[(&vec![f32::NAN; s.len()], 4)]);
        cpu.batch_norm_train(&s, &p, x, gamma, beta, &ov[0], &sv[0], &sv[1], rm, rv);
        let tag = format!("Cpu::batch_norm_train on views {s:?}");
        assert_close(
            &format!("{tag} output"),
            &cpu.read(&ov[0]),
            &want.output,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} mean"),
            &cpu.read(&sv[0]),
            &want.mean,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} inv_std"),
            &cpu.read(&sv[1]),
            &want.inv_std,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} running_mean"),
            &cpu.read(rm),
            &want.rm,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} running_var"),
            &cpu.read(rv),
            &want.rv,
            F32_TOLERANCE,
        );

        // Eval on the same views.
        let mut ev = vec![f32::NAN; s.len()];
        batch_norm::batch_norm_eval(&s, &p, &i.x, &i.gamma, &i.beta, &want.rm, &want.rv, &mut ev);
        cpu.batch_norm_eval(&s, &p, x, gamma, beta, rm, rv, &ov[0]);
        assert_close(
            &format!("Cpu::batch_norm_eval on views {s:?}"),
            &cpu.read(&ov[0]),
            &ev,
            F32_TOLERANCE,
        );

        // Backward: grad_gamma and grad_beta in one buffer, in reversed order.
        let b = back_inputs(&mut rng, &s, &p);
        let want = back_ref(&s, &p, |v| v.to_vec(), &b);
        let (_ins, iv) = packed(
            &cpu,
            &[
                (&b.train.x, 1),
                (&b.fwd.output, 2 + s.len()),
                (&b.dy, 3 + 2 * s.len()),
                (&b.train.gamma, 4 + 3 * s.len()),
                (&b.fwd.mean, 5 + 3 * s.len() + c),
                (&b.fwd.inv_std, 6 + 3 * s.len() + 2 * c),
            ],
        );
        let (_grads, gv) = packed(
            &cpu,
            &[
                (&vec![f32::NAN; s.len()], 9),
                (&nan_c, 9 + s.len() + c),
                (&nan_c, 9 + s.len()),
            ],
        );
        let (dx, dg, db) = (&gv[0], &gv[1], &gv[2]);
        let (_dxb, dxv) = packed(&cpu, &[(&vec![f32::NAN; s.len()], 6)]);
        cpu.batch_norm_backward(
            &s, &p, &iv[0], &iv[1], &iv[2], &iv[3], &iv[4], &iv[5], &dxv[0], dg, db,
        );
        let tag = format!("Cpu::batch_norm_backward on views {s:?}");
        assert_close(
            &format!("{tag} grad_input"),
            &cpu.read(&dxv[0]),
            &want.0,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} grad_gamma"),
            &cpu.read(dg),
            &want.1,
            F32_TOLERANCE,
        );
        assert_close(
            &format!("{tag} grad_beta"),
            &cpu.read(db),
            &want.2,
            F32_TOLERANCE,
        );
        // Untouched: the padding around the outputs of the gradient buffer stays NaN, and the
        // unused dx slot there too.
        assert!(cpu.read(dx).iter().all(|v| v.is_nan()));

        // ReLU and max pool on views (the backend borrows an op's inputs and outputs
        // separately, so they live in different buffers).
        let (_r, rin) = packed(&cpu, &[(&b.dy, 5)]);
        let (_o, rout) = packed(&cpu, &[(&vec![f32::NAN; s.len()], 11)]);
        cpu.relu_forward(&rin[0], &rout[0]);
        let mut want = vec![0.0; s.len()];
        batch_norm::relu_forward(&b.dy, &mut want);
        assert_eq!(bits(&cpu.read(&rout[0])), bits(&want), "Cpu::relu_forward");
        cpu.fill(&rout[0], f32::NAN);
        cpu.relu_backward(&iv[1], &rin[0], &rout[0]);
        batch_norm::relu_backward(&b.fwd.output, &b.dy, &mut want);
        assert_eq!(bits(&cpu.read(&rout[0])), bits(&want), "Cpu::relu_backward");

        let side = (s.spatial as f64).sqrt() as usize;
        let pool = ps(s.batch, c, side, s.spatial / side);
        let xin = &b.train.x;
        let mut want = vec![f32::NAN; pool.output_len()];
        max_pool::max_pool_forward(&pool, xin, &mut want);
        let (_pin, pin) = packed(&cpu, &[(xin, 2), (&want, 3 + s.len())]);
        let (_pout, pout) = packed(&cpu, &[(&vec![f32::NAN; pool.output_len()], 7)]);
        cpu.max_pool_forward(&pool, &pin[0], &pout[0]);
        assert_eq!(
            bits(&cpu.read(&pout[0])),
            bits(&want),
            "Cpu::max_pool_forward {pool:?}"
        );
        let (_gout, gout) = packed(&cpu, &[(&vec![f32::NAN; s.len()], 1)]);
        cpu.max_pool_backward(&pool, &pin[0], &pin[1], &gout[0]);
        let mut gwant = vec![f32::NAN; s.len()];
        max_pool::max_pool_backward(&pool, xin, &want, &mut gwant);
        assert_eq!(
            bits(&cpu.read(&gout[0])),
            bits(&gwant),
            "Cpu::max_pool_backward {pool:?}"
        );
    }
}

#[test]
fn cpu_copy_between_buffers_and_within_one() {
    let cpu = Cpu::new();
    let mut rng = rng(9);
    // Small and above the parallel threshold (2^18).
    for len in [1, 7, 1000, 300_000] {
        let data = random(&mut rng, len + 20);
        // Between two buffers, views at offsets.
        let src = cpu.tensor_from(&data);
        let dst = cpu.tensor_from(&vec![f32::NAN; len + 10]);
        cpu.copy(&cpu.view(&src, 13, len), &cpu.view(&dst, 4, len));
        let got = cpu.read(&dst);
        assert_eq!(bits(&got[4..4 + len]), bits(&data[13..13 + len]));
        assert!(got[..4].iter().chain(&got[4 + len..]).all(|v| v.is_nan()));

        // Within one buffer: disjoint ranges (both directions), overlapping ranges (both
        // directions, memmove semantics) and the same range.
        for (from, to) in [(0, len + 3), (len + 3, 1), (2, 5), (5, 2), (4, 4)] {
            let buf = cpu.tensor_from(&vec![0.0; 2 * len + 10]);
            let init: Vec<f32> = (0..2 * len + 10).map(|i| i as f32).collect();
            cpu.write(&buf, &init);
            cpu.copy(&cpu.view(&buf, from, len), &cpu.view(&buf, to, len));
            let mut want = init.clone();
            want.copy_within(from..from + len, to);
            assert_eq!(
                cpu.read(&buf),
                want,
                "copy within, {from} -> {to}, len {len}"
            );
        }
    }
}

/// Outputs of the fused forward (pooled, saved statistics, running statistics).
fn fused_train(s: &PoolShape, p: &BatchNorm, i: &TrainIn) -> TrainOut<f32> {
    let c = s.channels;
    let mut o = TrainOut {
        output: vec![f32::NAN; s.output_len()],
        mean: vec![f32::NAN; c],
        inv_std: vec![f32::NAN; c],
        rm: i.rm.clone(),
        rv: i.rv.clone(),
    };
    fast_norm::batch_norm_pool_train(
        s,
        p,
        &i.x,
        &i.gamma,
        &i.beta,
        &mut o.output,
        &mut o.mean,
        &mut o.inv_std,
        &mut o.rm,
        &mut o.rv,
    );
    o
}

/// The fused batch norm (+ ReLU) + max-pool (forward, eval, backward) against the same ops in
/// sequence: the fast unfused ops (forward bitwise: the same formula and statistics; backward
/// within the f32 bound: its sums run in another order) and the plain references (f32 and
/// f64). The backward's f64 reference routes by the f32 forward's winners (a near-tie can
/// order differently in f64, which would move a whole gradient to another element).
#[test]
fn fused_batch_norm_pool_matches_the_ops_in_sequence() {
    let mut rng = rng(8);
    let mut shapes = pool_shapes();
    shapes.push(ps(5, 16, 28, 28));
    for s in shapes {
        let n = s.norm_shape();
        for relu in [false, true] {
            let p = settings(relu);
            let tag = format!("fused {s:?} relu={relu}");
            let i = train_inputs(&mut rng, &n);

            // Forward, training mode.
            let fused = fused_train(&s, &p, &i);
            let seq = train_fast(&n, &p, &i);
            let mut seq_pooled = vec![f32::NAN; s.output_len()];
            fast_norm::max_pool_forward(&s, &seq.output, &mut seq_pooled);
            assert_eq!(bits(&fused.output), bits(&seq_pooled), "{tag}: pooled");
            for (what, a, b) in [
                ("saved_mean", &fused.mean, &seq.mean),
                ("saved_inv_std", &fused.inv_std, &seq.inv_std),
                ("running_mean", &fused.rm, &seq.rm),
                ("running_var", &fused.rv, &seq.rv),
            ] {
                assert_eq!(bits(a), bits(b), "{tag}: {what}");
            }
            let r32 = train_ref(&n, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv);
            let r64 = train_ref64(&n, &p, &i);
            let mut p32 = vec![f32::NAN; s.output_len()];
            max_pool::max_pool_forward(&s, &r32.output, &mut p32);
            let mut p64 = vec![f64::NAN; s.output_len()];
            max_pool::max_pool_forward(&s, &r64.output, &mut p64);
            check(&format!("{tag} pooled"), &fused.output, &p32, &p64);

            // Forward, eval mode.
            let mut ev = vec![f32::NAN; s.output_len()];
            fast_norm::batch_norm_pool_eval(&s, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv, &mut ev);
            let mut y = vec![f32::NAN; n.len()];
            fast_norm::batch_norm_eval(&n, &p, &i.x, &i.gamma, &i.beta, &i.rm, &i.rv, &mut y);
            let mut want = vec![f32::NAN; s.output_len()];
            fast_norm::max_pool_forward(&s, &y, &mut want);
            assert_eq!(bits(&ev), bits(&want), "{tag}: eval pooled");

            // Backward.
            let g = data(&mut rng, s.output_len(), 0.1, 1.0);
            let c = s.channels;
            let (mut dx, mut dg, mut db) = (
                vec![f32::NAN; n.len()],
                vec![f32::NAN; c],
                vec![f32::NAN; c],
            );
            let mut scratch = vec![f32::NAN; n.len()];
            fast_norm::pool_batch_norm_backward(
                &s,
                &p,
                &i.x,
                &g,
                &i.gamma,
                &i.beta,
                &fused.mean,
                &fused.inv_std,
                &mut scratch,
                &mut dx,
                &mut dg,
                &mut db,
            );
            let mut dy = vec![f32::NAN; n.len()];
            fast_norm::max_pool_backward(&s, &seq.output, &g, &mut dy);
            let b = BackIn {
                train: TrainIn {
                    x: i.x.clone(),
                    gamma: i.gamma.clone(),
                    beta: i.beta.clone(),
                    rm: i.rm.clone(),
                    rv: i.rv.clone(),
                },
                fwd: seq,
                dy,
            };
            let fast_seq = back_fast(&n, &p, &b);
            let r32 = back_ref(&n, &p, |v| v.to_vec(), &b);
            let r64 = back_ref(&n, &p, to64, &b);
            for (what, f, q, a, r) in [
                ("grad_input", &dx, &fast_seq.0, &r32.0, &r64.0),
                ("grad_gamma", &dg, &fast_seq.1, &r32.1, &r64.1),
                ("grad_beta", &db, &fast_seq.2, &r32.2, &r64.2),
            ] {
                assert_close(
                    &format!("{tag} {what} (fused vs fast ops)"),
                    f,
                    q,
                    F32_TOLERANCE,
                );
                check(&format!("{tag} {what}"), f, a, r);
            }
        }
    }
}
