//! Adam: GPU vs CPU over flat buffers, and the CPU reference against PyTorch's formula.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::ops::AdamStep;
use fewshot::Backend;

#[test]
fn adam_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(21);
    // 1 element, a length that is not a multiple of the 256-thread workgroup, and one large
    // enough for many workgroups; the last also scales the gradients (as clipping does).
    for (len, grad_scale) in [(1usize, 1.0f32), (1000, 1.0), (70_001, 0.5)] {
        let mut params = random(&mut rng, len);
        let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
        // params inside a larger flat buffer; m and v two views of one state buffer.
        let p_all = gpu.upload_f32(&[vec![9.0; 3], params.clone(), vec![9.0; 2]].concat());
        let p_v = gpu.view(&p_all, 3, len);
        let state = gpu.upload_f32(&[vec![9.0; 1], vec![0.0; 2 * len], vec![9.0; 1]].concat());
        let (m_v, v_v) = (gpu.view(&state, 1, len), gpu.view(&state, 1 + len, len));
        let g_all = gpu.tensor(len + 1);
        let g_v = gpu.view(&g_all, 1, len);
        for step in 1..=3u32 {
            let grads = random(&mut rng, len);
            let p = AdamStep {
                grad_scale,
                ..AdamStep::new(1e-2, step)
            };
            cpu::adam::adam(&p, &mut params, &grads, &mut m, &mut v);
            gpu.write(&g_v, &grads);
            gpu.adam(&p, &p_v, &g_v, &m_v, &v_v);
            if step == 1 || step == 3 {
                let pa = gpu.read(&p_all);
                let st = gpu.read(&state);
                assert!(
                    pa[..3].iter().chain(&pa[3 + len..]).all(|&x| x == 9.0),
                    "adam wrote outside params"
                );
                assert!(
                    st[0] == 9.0 && st[2 * len + 1] == 9.0,
                    "adam wrote outside m, v"
                );
                let what = format!("adam len {len} step {step}");
                assert_close(
                    &format!("{what} params"),
                    &pa[3..3 + len],
                    &params,
                    F32_TOLERANCE,
                );
                assert_close(&format!("{what} m"), &st[1..1 + len], &m, F32_TOLERANCE);
                assert_close(
                    &format!("{what} v"),
                    &st[1 + len..1 + 2 * len],
                    &v,
                    F32_TOLERANCE,
                );
            }
        }
    }
}

/// PyTorch's `torch.optim.Adam` update (no weight decay, amsgrad off), in f64, with the
/// hyper-parameters' f32 values (`AdamStep` stores them as f32: `1 - 0.999f32` is `1 - 0.999`
/// only to 1.3e-5 relative, which would otherwise swamp the comparison).
fn pytorch_adam(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, lr: f64, step: i32) {
    let (b1, b2, eps) = (0.9f32 as f64, 0.999f32 as f64, 1e-8f32 as f64);
    let lr = lr as f32 as f64;
    *m = b1 * *m + (1.0 - b1) * g;
    *v = b2 * *v + (1.0 - b2) * g * g;
    let m_hat = *m / (1.0 - b1.powi(step));
    let v_hat = *v / (1.0 - b2.powi(step));
    *p -= lr * m_hat / (v_hat.sqrt() + eps);
}

#[test]
fn adam_matches_pytorch_formula() {
    // Step 1 by hand: p = 1, g = 0.5, lr = 0.1: m = 0.05, v = 0.00025, m_hat = 0.5,
    // v_hat = 0.25, p = 1 - 0.1 * 0.5 / (0.5 + 1e-8) ~ 0.9.
    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    cpu::adam::adam(&AdamStep::new(0.1, 1), &mut p, &[0.5], &mut m, &mut v);
    let want_p = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
    assert!(
        (p[0] as f64 - want_p).abs() < 1e-6,
        "p = {} != {want_p}",
        p[0]
    );
    assert!((p[0] - 0.9).abs() < 1e-6, "p = {}", p[0]);
    // m = (1 - 0.9f32) * 0.5 and v = (1 - 0.999f32) * 0.25 carry the f32 rounding of the betas
    // (2.4e-7 and 1.3e-5 relative).
    assert!(
        (m[0] / 0.05 - 1.0).abs() < 1e-6 && (v[0] / 0.00025 - 1.0).abs() < 2e-5,
        "m = {}, v = {}",
        m[0],
        v[0]
    );

    // A few more steps with changing gradients against the f64 formula.
    let (mut pf, mut mf, mut vf) = (1.0f64, 0.0f64, 0.0f64);
    pytorch_adam(&mut pf, &mut mf, &mut vf, 0.5, 0.1, 1);
    for (step, g) in [(2, -0.25f32), (3, 2.0), (4, 0.01)] {
        cpu::adam::adam(&AdamStep::new(0.1, step), &mut p, &[g], &mut m, &mut v);
        pytorch_adam(&mut pf, &mut mf, &mut vf, g as f64, 0.1, step as i32);
        eprintln!(
            "step {step}: p {} (f64 {pf}), m {} ({mf}), v {} ({vf})",
            p[0], m[0], v[0]
        );
        assert!(
            (p[0] as f64 - pf).abs() < 1e-6,
            "step {step}: p {} vs {pf}",
            p[0]
        );
        assert!(
            (m[0] as f64 - mf).abs() < 1e-6 * mf.abs(),
            "step {step}: m {} vs {mf}",
            m[0]
        );
        assert!(
            (v[0] as f64 - vf).abs() < 1e-6 * vf,
            "step {step}: v {} vs {vf}",
            v[0]
        );
    }

    // The GPU kernel takes the same hand-computed step.
    let Some(gpu) = gpu() else { return };
    let (gp, gm, gv) = (gpu.tensor_from(&[1.0]), gpu.zeros(1), gpu.zeros(1));
    gpu.adam(
        &AdamStep::new(0.1, 1),
        &gp,
        &gpu.tensor_from(&[0.5]),
        &gm,
        &gv,
    );
    let got = gpu.read(&gp)[0];
    assert!(
        (got as f64 - want_p).abs() < 1e-6,
        "gpu p = {got} != {want_p}"
    );
}
