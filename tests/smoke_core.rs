use intattention::*;

#[test]
fn spec_table_b5() {
    let lut = Lut::new(5, 6.6).unwrap();
    assert_eq!(
        lut.entries(),
        &[
            255, 206, 167, 135, 109, 88, 71, 57, 46, 38, 30, 25, 20, 16, 13, 10, 8, 7, 6, 4, 4, 3,
            2, 2, 2, 1, 1, 1, 1, 1, 0, 0
        ]
    );
}

#[test]
fn pipelines_close_to_each_other() {
    let shape = AttnShape::new(1, 2, 64, 32);
    let gen = |seed: u32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) as f32 / u32::MAX as f32)
                    - 0.5
            })
            .collect()
    };
    let q = gen(1, shape.q_elems());
    let k = gen(2, shape.kv_elems());
    let v = gen(3, shape.kv_elems());
    let r = Attention::new(Pipeline::Fp32)
        .run(&shape, &q, &k, &v)
        .unwrap();
    for p in [Pipeline::Fp16, Pipeline::Int8, Pipeline::IntAttention] {
        let o = Attention::new(p).run(&shape, &q, &k, &v).unwrap();
        let err: f32 = o
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("{p}: max abs err {err}");
        assert!(err < 0.05, "{p} {err}");
    }
}
