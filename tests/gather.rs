//! gather (episode assembly from a device-resident dataset) and fill: GPU vs CPU.
mod common;

use common::*;
use fewshot::cpu;
use fewshot::Backend;
use rand::Rng;

#[test]
fn gather_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng(1);
    // (items in the dataset, item length, items gathered): batch 1, lengths that are not
    // multiples of the 256-thread workgroup, an episode-sized batch of 28x28 images.
    for (items, item_len, count) in [(5, 1, 1), (17, 37, 9), (300, 784, 120), (3, 3, 1000)] {
        let dataset = random(&mut rng, items * item_len);
        let indices: Vec<u32> = (0..count)
            .map(|_| rng.random_range(0..items as u32))
            .collect();
        let mut want = vec![0.0; count * item_len];
        cpu::gather::gather(item_len, &dataset, &indices, &mut want);

        // Views at non-zero offsets, as when the dataset or batch lives inside a larger buffer.
        let big = gpu.upload_f32(&[vec![7.0; 3], dataset.clone()].concat());
        let dataset_view = gpu.view(&big, 3, dataset.len());
        let index_buf = gpu.upload_u32(&[vec![0u32; 5], indices.clone()].concat());
        let index_view = gpu.view(&index_buf, 5, count);
        let output = poisoned(gpu, count * item_len + 2);
        let output_view = gpu.view(&output, 1, count * item_len);
        gpu.gather(item_len, &dataset_view, &index_view, &output_view);
        let all = gpu.read(&output);
        assert!(
            all[0].is_nan() && all[all.len() - 1].is_nan(),
            "gather wrote outside its view"
        );
        assert_close(
            &format!("gather {items}x{item_len} -> {count}"),
            &all[1..all.len() - 1],
            &want,
            0.0,
        );
    }
}

#[test]
fn fill_writes_every_element_of_its_view() {
    let Some(gpu) = gpu() else { return };
    for len in [1usize, 255, 257, 70_001] {
        let t = poisoned(gpu, len + 2);
        let view = gpu.view(&t, 1, len);
        gpu.fill(&view, 2.5);
        let all = gpu.read(&t);
        assert!(
            all[0].is_nan() && all[len + 1].is_nan(),
            "fill wrote outside its view"
        );
        assert!(
            all[1..=len].iter().all(|&v| v == 2.5),
            "fill missed elements at len {len}"
        );
    }
}

#[test]
fn deferred_read_returns_the_data_of_its_submission() {
    let Some(gpu) = gpu() else { return };
    let t = gpu.upload_f32(&[1.0, 2.0]);
    let first = gpu.read_deferred(&t);
    gpu.fill(&t, 5.0);
    let second = gpu.read_deferred(&t);
    gpu.flush();
    assert_eq!(gpu.resolve(&second, true).unwrap().unwrap(), vec![5.0, 5.0]);
    assert_eq!(gpu.resolve(&first, true).unwrap().unwrap(), vec![1.0, 2.0]);
}

/// Read-back buffers are reused: a training loop's deferred reads (and blocking reads of the
/// same size) allocate a handful of staging buffers in all, not one per read; interleaved reads
/// in flight each keep their own buffer and data, and sizes of several classes come back right.
#[test]
fn read_back_buffers_are_pooled_and_reads_stay_correct() {
    if gpu().is_none() {
        return;
    }
    // A context of its own: the other tests of this binary read concurrently from the shared
    // one, which would blur the count of created buffers.
    let own = fewshot::gpu::Gpu::new(std::env::var("FEWSHOT_ADAPTER").ok().as_deref())
        .expect("a second context on the same adapter");
    let gpu = &own;
    let t = gpu.upload_f32(&[0.0; 300]);
    let before = gpu.staging_buffers_created();
    for step in 0..40 {
        gpu.fill(&t, step as f32);
        // Two reads in flight at once (as the trainer keeps up to two), of different sizes.
        let a = gpu.read_deferred(&gpu.view(&t, 0, 2));
        gpu.fill(&t, -(step as f32));
        let b = gpu.read_deferred(&gpu.view(&t, 10, 200));
        gpu.flush();
        assert_eq!(
            gpu.resolve(&b, true).unwrap().unwrap(),
            vec![-(step as f32); 200]
        );
        assert_eq!(
            gpu.resolve(&a, true).unwrap().unwrap(),
            vec![step as f32; 2]
        );
        assert_eq!(gpu.read(&gpu.view(&t, 0, 3)), vec![-(step as f32); 3]);
    }
    let created = gpu.staging_buffers_created() - before;
    assert!(
        created <= 4,
        "{created} read-back buffers for 120 reads of two size classes"
    );
    // A read larger than the pooled sizes still works (and is not pooled).
    let big = gpu.upload_f32(&vec![1.5; (4 << 20) / 4 + 3]);
    assert!(gpu.read(&big).iter().all(|&v| v == 1.5));
}
