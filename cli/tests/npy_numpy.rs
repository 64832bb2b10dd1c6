//! Our `.npy` files against numpy itself: numpy loads what we write and `numpy.save` writes
//! the very same bytes; we read what numpy writes in every version and byte order, and refuse
//! what we do not support with the right message. Needs python3 with numpy, so the test is
//! ignored by default; .ci/run runs it with `--ignored` where numpy is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use intattention_cli::npy;

const REASON: &str = "needs python3 with numpy (pip install numpy); .ci/run runs it when present";

/// The arrays both sides build: `n` values of each dtype from the same formulas.
const PYTHON: &str = r#"
import sys, io, pathlib
import numpy as np

d = pathlib.Path(sys.argv[1])

def values(kind, shape):
    n = int(np.prod(shape, dtype=np.int64))
    i = np.arange(n, dtype=np.int64)
    a = {
        "f32": (i * 0.5 - 3).astype(np.float32),
        "i32": (i * 7919 - 100000).astype(np.int32),
        "u8": (i % 256).astype(np.uint8),
        "u32": ((i * 2654435761) % 2**32).astype(np.uint32),
        "bool": (i % 3 == 0),
    }[kind]
    return a.reshape(shape)

# 1. What we wrote: numpy loads it, and numpy.save writes the same bytes.
for line in (d / "ours.txt").read_text().split("\n"):
    if not line:
        continue
    name, kind, dims = line.split(" ", 2)
    shape = tuple(int(x) for x in dims.split(",") if x)
    want = values(kind, shape)
    ours = (d / name).read_bytes()
    got = np.load(d / name)
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
    assert np.array_equal(got, want), name
    buf = io.BytesIO()
    np.save(buf, want)
    assert buf.getvalue() == ours, (name, buf.getvalue()[:128], ours[:128])

# 2. What numpy writes, for us to read.
def save(name, a, version=None):
    with open(d / name, "wb") as f:
        np.lib.format.write_array(f, a, version=version)

save("v1.npy", values("f32", (3, 5)))
save("v2.npy", values("i32", (2, 3, 4)), version=(2, 0))
save("v3.npy", values("u32", (7,)), version=(3, 0))
save("be.npy", values("f32", (4, 4)).astype(">f4"))
save("be_i32.npy", values("i32", (6,)).astype(">i4"))
save("bool.npy", values("bool", (2, 9)))
save("u8.npy", values("u8", (300,)))
save("fortran.npy", np.asfortranarray(values("f32", (3, 4))))
save("f64.npy", values("f32", (3,)).astype(np.float64))
save("f16.npy", values("f32", (3,)).astype(np.float16))
save("structured.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
save("scalar.npy", np.float32(1.5))
save("empty.npy", np.zeros((0, 4), np.float32))
print("ok")
"#;

fn python_numpy() -> Option<()> {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .ok()?
        .status
        .success();
    ok.then_some(())
}

fn values_f32(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}
fn values_i32(n: usize) -> Vec<i32> {
    (0..n as i64).map(|i| (i * 7919 - 100_000) as i32).collect()
}
fn values_u8(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 256) as u8).collect()
}
fn values_u32(n: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 2_654_435_761) % (1 << 32)) as u32)
        .collect()
}
fn values_bool(n: usize) -> Vec<bool> {
    (0..n).map(|i| i % 3 == 0).collect()
}

fn tmpdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("intattention-npy-numpy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes one of our files and lists it for the Python side.
fn ours(dir: &Path, list: &mut String, name: &str, kind: &str, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let p = dir.join(name);
    match kind {
        "f32" => npy::write(&p, shape, &values_f32(n)),
        "i32" => npy::write(&p, shape, &values_i32(n)),
        "u8" => npy::write(&p, shape, &values_u8(n)),
        "u32" => npy::write(&p, shape, &values_u32(n)),
        "bool" => npy::write(&p, shape, &values_bool(n)),
        _ => unreachable!("{kind}"),
    }
    .unwrap();
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    list.push_str(&format!("{name} {kind} {}\n", dims.join(",")));
}

#[test]
#[ignore = "needs python3 with numpy (pip install numpy); .ci/run runs it when present"]
fn numpy_reads_our_files_and_we_read_numpys() {
    python_numpy().unwrap_or_else(|| panic!("{REASON}"));
    let dir = tmpdir();
    let mut list = String::new();
    for (kind, shapes) in [
        (
            "f32",
            &[&[2usize, 3][..], &[1], &[7, 1, 3], &[300, 300], &[]][..],
        ),
        ("i32", &[&[5][..], &[2, 2, 2, 2]][..]),
        ("u8", &[&[1, 2, 3, 4][..], &[0]][..]),
        ("u32", &[&[9][..], &[12345678901234, 0]][..]),
        ("bool", &[&[5][..], &[3, 0, 2]][..]),
    ] {
        for (i, shape) in shapes.iter().enumerate() {
            ours(
                &dir,
                &mut list,
                &format!("ours-{kind}-{i}.npy"),
                kind,
                shape,
            );
        }
    }
    // A first axis of 19 digits: nearly all of numpy's spare room.
    ours(
        &dir,
        &mut list,
        "ours-wide.npy",
        "u8",
        &[1_000_000_000_000_000_000, 0],
    );
    std::fs::write(dir.join("ours.txt"), list).unwrap();

    let out = Command::new("python3")
        .args(["-c", PYTHON, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let f32s = |name: &str| npy::read_f32(dir.join(name)).unwrap();
    let a = f32s("v1.npy");
    assert_eq!((a.shape, a.data), (vec![3, 5], values_f32(15)));
    let a = npy::read_i32(dir.join("v2.npy")).unwrap();
    assert_eq!((a.shape, a.data), (vec![2, 3, 4], values_i32(24)));
    let a = npy::read::<u32>(dir.join("v3.npy")).unwrap();
    assert_eq!((a.shape, a.data), (vec![7], values_u32(7)));
    let a = f32s("be.npy");
    assert_eq!((a.shape, a.data), (vec![4, 4], values_f32(16)));
    assert_eq!(
        npy::read_i32(dir.join("be_i32.npy")).unwrap().data,
        values_i32(6)
    );
    let a = npy::read_bool(dir.join("bool.npy")).unwrap();
    assert_eq!((a.shape, a.data), (vec![2, 9], values_bool(18)));
    assert_eq!(
        npy::read_u8(dir.join("u8.npy")).unwrap().data,
        values_u8(300)
    );
    for (name, needle) in [
        ("fortran.npy", "Fortran order"),
        ("f64.npy", "found float64 ('<f8')"),
        ("f16.npy", "found float16 ('<f2')"),
        ("structured.npy", "found a structured dtype"),
        ("scalar.npy", "0-D"),
        ("empty.npy", "zero-length"),
    ] {
        let e = npy::read_f32(dir.join(name)).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
}
