//! The reader against hand-made hostile headers, the writer against numpy's bytes, and the
//! atomic replacement of outputs. (numpy itself reads and writes our files in
//! tests/npy_numpy.rs, where python3 with numpy is installed.)

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// A fresh directory per test: tests run in parallel.
fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("intattention-npy-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file of the given version with `dict` as its header (padded as numpy pads) and `data`.
fn file_with(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let mut header = dict.as_bytes().to_vec();
    while !(prefix + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    file_raw(version, &header, data)
}

/// A file with exactly `header` after the length field.
fn file_raw(version: u8, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn f32_file(shape: &str, data: &[u8]) -> Vec<u8> {
    file_with(
        1,
        &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
        data,
    )
}

fn err<T: Element + std::fmt::Debug>(bytes: &[u8]) -> String {
    read_bytes::<T>(bytes).unwrap_err().to_string()
}

#[test]
fn round_trips_every_type() {
    let dir = tmpdir("round-trip");
    let p = dir.join("f32.npy");
    write_f32(&p, &[2, 3], &[1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]).unwrap();
    let a = read_f32(&p).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, vec![1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]);
    let p = dir.join("i32.npy");
    write_i32(&p, &[3], &[i32::MIN, 0, i32::MAX]).unwrap();
    assert_eq!(read_i32(&p).unwrap().data, vec![i32::MIN, 0, i32::MAX]);
    let p = dir.join("u8.npy");
    write_u8(&p, &[1, 2], &[0, 255]).unwrap();
    assert_eq!(read_u8(&p).unwrap().data, vec![0, 255]);
    let p = dir.join("u32.npy");
    write_u32(&p, &[2], &[7, u32::MAX]).unwrap();
    assert_eq!(read::<u32>(&p).unwrap().data, vec![7, u32::MAX]);
    let p = dir.join("bool.npy");
    write(&p, &[1, 3], &[true, false, true]).unwrap();
    assert_eq!(read_bool(&p).unwrap().data, vec![true, false, true]);
    // More than one chunk of data.
    let big: Vec<f32> = (0..40_000).map(|i| i as f32 * 0.5).collect();
    let p = dir.join("big.npy");
    write_f32(&p, &[200, 200], &big).unwrap();
    assert_eq!(read_f32(&p).unwrap().data, big);
}

#[test]
fn headers_are_numpys_bytes() {
    // numpy 2.4's np.save output for these arrays: sorted keys, `(n,)` tuples, 21 - digits
    // spaces of room for the first axis, padded to 64 bytes with spaces and a newline.
    let cases: [(Vec<u8>, &str); 4] = [
        (
            header_bytes::<f32>(&[2, 3]),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
        ),
        (
            header_bytes::<i32>(&[3]),
            "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
        ),
        (
            header_bytes::<f32>(&[]),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
        ),
        (
            header_bytes::<bool>(&[5]),
            "{'descr': '|b1', 'fortran_order': False, 'shape': (5,), }",
        ),
    ];
    for (got, dict) in cases {
        assert_eq!(got.len(), 128, "{dict}");
        assert_eq!(&got[..10], b"\x93NUMPY\x01\x00v\x00");
        assert_eq!(&got[10..10 + dict.len()], dict.as_bytes());
        assert!(got[10 + dict.len()..127].iter().all(|&b| b == b' '));
        assert_eq!(got[127], b'\n');
    }
    let got = header_bytes::<u8>(&[1, 2, 3, 4]);
    assert_eq!(got.len(), 128);
    assert!(got.starts_with(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 3, 4), }"
    ));
    // A first axis of 21 digits or more gets no room, as in numpy.
    let got = header_bytes::<f32>(&[usize::MAX, 1]);
    assert_eq!(got.len() % 64, 0);
    assert!(read_bytes::<f32>(&got).is_err(), "overflowing shape");
}

#[test]
fn wrong_dtype_names_both_types_and_the_file() {
    let dir = tmpdir("dtype");
    let p = dir.join("dtype.npy");
    write_i32(&p, &[2], &[1, 2]).unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(e.contains("expected dtype float32"), "{e}");
    assert!(e.contains("int32 ('<i4')"), "{e}");
    assert!(e.contains("dtype.npy"), "{e}");
    // Types no writer here produces.
    for (descr, found) in [
        ("'<f8'", "float64 ('<f8')"),
        ("'<f2'", "float16 ('<f2')"),
        ("'|i1'", "int8 ('|i1')"),
        ("'|f4'", "float32 ('|f4')"),
        ("'=f4'", "'=f4'"),
        ("'f4'", "'f4'"),
        ("'<U10'", "'<U10'"),
        ("'<f4\\x00'", "escapes"),
        ("[('a', '<f4')]", "found a structured dtype"),
        ("('<f4', (2,))", "structured"),
    ] {
        let bytes = file_with(
            1,
            &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"),
            &[0; 4],
        );
        let e = err::<f32>(&bytes);
        assert!(e.contains(found), "{descr}: {e}");
    }
    // One-byte types take any byte-order mark, as numpy allows.
    for descr in ["'|u1'", "'<u1'", "'>u1'"] {
        let bytes = file_with(
            1,
            &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}"),
            &[7, 9],
        );
        assert_eq!(
            read_bytes::<u8>(&bytes).unwrap().data,
            vec![7, 9],
            "{descr}"
        );
    }
}

#[test]
fn big_endian_and_every_version() {
    let be = file_with(
        1,
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
        &[1.5f32.to_be_bytes(), (-2.0f32).to_be_bytes()].concat(),
    );
    assert_eq!(read_bytes::<f32>(&be).unwrap().data, vec![1.5, -2.0]);
    let be = file_with(
        2,
        "{'descr': '>i4', 'fortran_order': False, 'shape': (1, 1), }",
        &(-7i32).to_be_bytes(),
    );
    assert_eq!(read_bytes::<i32>(&be).unwrap().data, vec![-7]);
    // Version 3.0: a UTF-8 header (numpy uses it for non-Latin-1 field names).
    let v3 = file_with(
        3,
        "{'descr': '<u4', 'fortran_order': False, 'shape': (1,), }",
        &9u32.to_le_bytes(),
    );
    assert_eq!(read_bytes::<u32>(&v3).unwrap().data, vec![9]);
    let mut bad = v3.clone();
    bad[20] = 0xff;
    assert!(err::<u32>(&bad).contains("UTF-8"));
    for (major, minor) in [(0, 0), (1, 1), (4, 0), (255, 255)] {
        let mut b = v3.clone();
        b[6] = major;
        b[7] = minor;
        let e = err::<u32>(&b);
        assert!(e.contains(&format!("version {major}.{minor}")), "{e}");
    }
}

#[test]
fn fortran_order_is_refused() {
    let bytes = file_with(
        1,
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
        &[0; 16],
    );
    assert!(err::<f32>(&bytes).contains("Fortran order"));
}

#[test]
fn truncated_short_and_trailing_data_are_errors() {
    let dir = tmpdir("trunc");
    let p = dir.join("trunc.npy");
    write_f32(&p, &[4, 4], &[1.0; 16]).unwrap();
    let good = fs::read(&p).unwrap();
    let mut bytes = good.clone();
    bytes.truncate(bytes.len() - 5);
    write_raw(&p, &bytes).unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("needs 64 bytes"),
        "{e}"
    );
    let mut bytes = good.clone();
    bytes.extend_from_slice(b"xyz");
    write_raw(&p, &bytes).unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(e.contains("3 bytes follow the data"), "{e}");
    // The same through a reader of unknown length (a pipe).
    let e = read_from::<f32, _>(&good[..good.len() - 1], None).unwrap_err();
    assert!(
        e.contains("truncated") && e.contains("the file has 63"),
        "{e}"
    );
    let e = read_from::<f32, _>(&bytes[..], None).unwrap_err();
    assert!(e.contains("bytes follow the data"), "{e}");
    assert_eq!(
        read_from::<f32, _>(&good[..], None).unwrap().data,
        vec![1.0; 16]
    );
    // Cut anywhere: always an error, never a panic.
    for cut in 0..good.len() {
        assert!(read_bytes::<f32>(&good[..cut]).is_err(), "cut at {cut}");
        assert!(
            read_from::<f32, _>(&good[..cut], None).is_err(),
            "cut at {cut}"
        );
    }
    write_raw(&p, b"not an npy file at all").unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(e.contains("not a valid .npy"), "{e}");
    let e = read_f32(dir.join("does-not-exist.npy"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read") && e.contains("does-not-exist.npy"),
        "{e}"
    );
    let e = read_f32(&dir).unwrap_err().to_string();
    assert!(e.contains("directory"), "{e}");
}

#[test]
fn zero_dims_and_scalars_are_errors() {
    let dir = tmpdir("zero");
    let p = dir.join("zero.npy");
    write_f32(&p, &[0, 4], &[]).unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(e.contains("zero-length"), "{e}");
    write_f32(&p, &[], &[1.0]).unwrap();
    let e = read_f32(&p).unwrap_err().to_string();
    assert!(e.contains("0-D"), "{e}");
}

#[test]
fn bool_bytes_must_be_0_or_1() {
    let bytes = file_with(
        1,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }",
        &[1, 0, 2],
    );
    let e = err::<bool>(&bytes);
    assert!(
        e.contains("invalid value 2") && e.contains("flat index 2"),
        "{e}"
    );
}

#[test]
fn lying_header_lengths_allocate_nothing_large() {
    // A version 2.0 file of 585 bytes whose header claims 4 GiB.
    let mut bytes = f32_file("(1,)", &[0; 4]);
    bytes.resize(585, b' ');
    bytes[6] = 2;
    bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = err::<f32>(&bytes);
    assert!(
        e.contains("claims 4294967295 bytes but only 573 follow"),
        "{e}"
    );
    // Unknown length (a pipe): the cap refuses it before reading.
    let e = read_from::<f32, _>(&bytes[..], None).unwrap_err();
    assert!(e.contains("at most 65536"), "{e}");
    // A header of exactly the cap is read; one byte more is refused.
    let padded = |len: usize| {
        let mut h = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }".to_vec();
        h.resize(len - 1, b' ');
        h.push(b'\n');
        file_raw(2, &h, &[0; 4])
    };
    assert!(read_bytes::<f32>(&padded(MAX_HEADER_LEN)).is_ok());
    let e = err::<f32>(&padded(MAX_HEADER_LEN + 1));
    assert!(e.contains("65537 bytes long; at most 65536"), "{e}");
    // Shapes whose data cannot exist.
    let e = err::<f32>(&f32_file("(1099511627776, 1099511627776)", &[0; 16]));
    assert!(e.contains("overflows"), "{e}");
    let e = err::<f32>(&f32_file("(1099511627776, 4)", &[0; 16]));
    assert!(e.contains("truncated"), "{e}");
    let e = err::<f32>(&f32_file("(99999999999999999999999999,)", &[0; 16]));
    assert!(e.contains("too large"), "{e}");
    let many = format!("({})", "1, ".repeat(65));
    let e = err::<f32>(&f32_file(&many, &[0; 4]));
    assert!(e.contains("more than 64 dimensions"), "{e}");
}

#[test]
fn nested_brackets_fail_at_once() {
    for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
        let deep = format!("{}{}", open.repeat(10_000), close.repeat(10_000));
        for dict in [
            format!("{{'descr': {deep}, 'fortran_order': False, 'shape': (1,), }}"),
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {deep}, }}"),
            format!("{{'descr': '<f4', 'fortran_order': {deep}, 'shape': (1,), }}"),
            format!("{{'shape': (1,), {deep}: 1}}"),
            deep.clone(),
        ] {
            let bytes = file_with(2, &dict, &[0; 4]);
            let t = Instant::now();
            let e = err::<f32>(&bytes);
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
            assert!(
                e.contains("not a valid .npy file") || e.contains("found a structured dtype"),
                "{e}"
            );
            assert!(e.len() < 300, "one short line: {e}");
        }
    }
    // The whole header budget spent on one long nesting: still linear.
    let deep = "(".repeat(MAX_HEADER_LEN - 100);
    let bytes = file_with(2, &format!("{{'shape': {deep}"), &[]);
    let t = Instant::now();
    assert!(read_bytes::<f32>(&bytes).is_err());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn header_grammar() {
    let ok = |dict: &str| {
        read_bytes::<f32>(&file_with(1, dict, &[0; 8]))
            .map(|a| a.shape)
            .map_err(|e| e.to_string())
    };
    // What other writers produce: key order, quotes, spacing, trailing commas, Python 2 longs.
    for dict in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}",
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,)}",
        "{ 'descr' : '<f4' ,\n\t'fortran_order' : False , 'shape' : ( 2 , ) , }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }",
    ] {
        assert_eq!(ok(dict), Ok(vec![2]), "{dict}");
    }
    assert_eq!(
        ok("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)}"),
        Ok(vec![1, 2])
    );
    for (dict, needle) in [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }",
            "','",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "integer",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0x2,), }",
            "','",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }",
            "'('",
        ),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
            "True or False",
        ),
        (
            "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,), }",
            "after the bool",
        ),
        ("{'descr': '<f4', 'fortran_order': False, }", "no 'shape'"),
        ("{'descr': '<f4', 'shape': (2,), }", "no 'fortran_order'"),
        ("{'fortran_order': False, 'shape': (2,), }", "no 'descr'"),
        (
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            "twice",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "unexpected key 'x'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x",
            "padding",
        ),
        (
            "{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }",
            "',' or '}'",
        ),
        (
            "{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }",
            "','",
        ),
        ("{'descr: '<f4'}", "':'"),
        ("['descr']", "'{'"),
        ("", "ends"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,",
            "ends",
        ),
    ] {
        let e = ok(dict).unwrap_err();
        assert!(e.contains(needle), "{dict}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn writing_checks_the_shape() {
    let dir = tmpdir("shape");
    let e = write_f32(dir.join("bad.npy"), &[2, 2], &[1.0; 3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds 4 elements, got 3"), "{e}");
    assert!(write_f32(dir.join("bad.npy"), &[usize::MAX, 2], &[]).is_err());
    assert!(write_f32(dir.join("bad.npy"), &[1; 65], &[1.0]).is_err());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
}

/// The directory's entries, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn outputs_replace_targets_only_on_commit() {
    let dir = tmpdir("staged");
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    write_u8(&a, &[1], &[1]).unwrap();
    let mut out = Outputs::new();
    out.stage(&a, &[2], &[5u8, 6]).unwrap();
    out.stage(&b, &[1], &[7u32]).unwrap();
    assert_eq!(
        read_u8(&a).unwrap().data,
        vec![1],
        "not replaced before commit"
    );
    assert!(!b.exists());
    assert_eq!(entries(&dir).len(), 3, "a and two temporaries");
    drop(out);
    assert_eq!(entries(&dir), ["a.npy"], "temporaries removed");
    assert_eq!(read_u8(&a).unwrap().data, vec![1]);

    // A failing second output leaves the first target as it was.
    let mut out = Outputs::new();
    out.stage(&a, &[2], &[5u8, 6]).unwrap();
    let e = out
        .stage(dir.join("missing/b.npy"), &[1], &[7u32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/b.npy"), "{e}");
    drop(out);
    assert_eq!(entries(&dir), ["a.npy"]);
    assert_eq!(read_u8(&a).unwrap().data, vec![1]);

    let mut out = Outputs::new();
    out.stage(&a, &[2], &[5u8, 6]).unwrap();
    out.stage(&b, &[1], &[7u32]).unwrap();
    out.commit().unwrap();
    assert_eq!(entries(&dir), ["a.npy", "b.npy"]);
    assert_eq!(read_u8(&a).unwrap().data, vec![5, 6]);
    assert_eq!(read::<u32>(&b).unwrap().data, vec![7]);

    let e = write_u8(&dir, &[1], &[1]).unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
}

#[cfg(unix)]
#[test]
fn symlinks_are_followed_and_modes_kept() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tmpdir("links");
    let (real, link) = (dir.join("real.npy"), dir.join("link.npy"));
    write_f32(&real, &[1], &[1.0]).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    symlink(&real, &link).unwrap();
    write_f32(&link, &[1], &[2.0]).unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read_f32(&real).unwrap().data, vec![2.0]);
    let mode = fs::metadata(&real).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[cfg(target_os = "linux")]
#[test]
fn devices_are_written_directly() {
    write_f32("/dev/null", &[2], &[1.0, 2.0]).unwrap();
    let e = write_f32("/dev/full", &[2], &[1.0, 2.0])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/full") && e.contains("No space left"),
        "{e}"
    );
}

#[test]
fn same_file_and_check_output() {
    let dir = tmpdir("same");
    let a = dir.join("a.npy");
    write_u8(&a, &[1], &[1]).unwrap();
    let spelled = dir.join(".").join("a.npy");
    assert!(same_file(&a, &spelled));
    let hard = dir.join("hard.npy");
    fs::hard_link(&a, &hard).unwrap();
    assert!(same_file(&a, &hard));
    assert!(!same_file(&a, &dir.join("b.npy")));
    assert!(same_file(&dir.join("b.npy"), &dir.join(".").join("b.npy")));
    assert!(check_output(&a).is_ok());
    assert!(check_output(&dir.join("new.npy")).is_ok());
    let e = check_output(&dir.join("no/such.npy"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = check_output(&a.join("x.npy")).unwrap_err().to_string();
    assert!(e.contains("not a directory"), "{e}");
    let e = check_output(&dir).unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
}

proptest! {
    #[test]
    fn any_bytes_are_an_error_or_an_array(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = read_bytes::<f32>(&bytes);
        let _ = read_bytes::<bool>(&bytes);
        let _ = read_from::<u8, _>(&bytes[..], None);
    }

    #[test]
    fn damaged_files_are_an_error_or_an_array(
        at in 0usize..200,
        byte in any::<u8>(),
        cut in 0usize..200,
    ) {
        let mut bytes = f32_file("(3, 4)", &[0x3f; 48]);
        let len = bytes.len();
        bytes[at % len] = byte;
        bytes.truncate(len - cut % 40);
        if let Ok(a) = read_bytes::<f32>(&bytes) {
            prop_assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
        }
    }

    #[test]
    fn written_files_read_back(
        shape in proptest::collection::vec(1usize..5, 1..5),
        seed in any::<u32>(),
    ) {
        let n: usize = shape.iter().product();
        let data: Vec<i32> = (0..n as u32).map(|i| (i ^ seed).wrapping_mul(2_654_435_761) as i32).collect();
        let mut bytes = Vec::new();
        write_to(&mut bytes, &shape, &data).unwrap();
        prop_assert_eq!(bytes.len() % 64, (n * 4) % 64);
        let a = read_bytes::<i32>(&bytes).unwrap();
        prop_assert_eq!(a.shape, shape);
        prop_assert_eq!(a.data, data);
    }
}

#[test]
fn reads_f16_widened_to_f32_in_both_byte_orders() {
    let vals = [0.0f32, -1.5, 65504.0, 6.1e-5, 0.333];
    let h: Vec<half::f16> = vals.iter().map(|&x| half::f16::from_f32(x)).collect();
    let mut little = Vec::new();
    write_to(&mut little, &[5], &h).unwrap();
    let dir = std::env::temp_dir().join(format!("intattention-npy-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("le.npy");
    std::fs::write(&p, &little).unwrap();
    let a = read_f16_as_f32(&p).unwrap();
    assert_eq!(a.shape, vec![5]);
    let want: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
    assert_eq!(a.data, want);
    // The same values big-endian: the header says '>f2' and every element's bytes swap.
    let header_end = little.len() - 2 * h.len();
    let mut big = little[..header_end].to_vec();
    let at = big.windows(3).position(|w| w == b"<f2").unwrap();
    big[at] = b'>';
    for x in &h {
        big.extend_from_slice(&x.to_be_bytes());
    }
    let p = dir.join("be.npy");
    std::fs::write(&p, &big).unwrap();
    let b = read_f16_as_f32(&p).unwrap();
    assert_eq!(b.data, want);
    // f16 is not f32: asking for the other dtype is an error.
    assert!(read_f32(&p).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
