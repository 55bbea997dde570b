//! Tests of the GGUF reader and writer: round trips of every value and supported tensor
//! type, dequantisation against definitions written out independently here and against
//! hand-computed blocks, quantisers against the `gguf` Python package's bytes, and
//! robustness on truncated, inconsistent and randomly corrupted files.

use super::*;
use rand::{Rng, SeedableRng};

fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Little-endian byte builder for hand-made (and deliberately broken) files.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(tensors)
            .u64(kvs)
    }
}

// --- independent straightforward dequantisation, element by element ------------------

fn half(b: &[u8], i: usize) -> f64 {
    // Written out from the IEEE definition again, independently of `f16_to_f64`.
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    let s = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let e = ((h >> 10) & 31) as i32;
    let f = (h & 1023) as f64;
    if e == 0 {
        s * f / 1024.0 / 16384.0
    } else {
        s * (1024.0 + f) / 1024.0 * 2f64.powi(e - 15)
    }
}

fn reference_dequant(ty: GgmlType, data: &[u8], n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let (blk, j) = (i / 32, i % 32);
            let nib = |qs: &[u8]| -> u8 {
                if j < 16 {
                    qs[j] & 15
                } else {
                    qs[j - 16] >> 4
                }
            };
            match ty {
                GgmlType::F32 => {
                    f32::from_le_bytes(data[4 * i..4 * i + 4].try_into().unwrap()) as f64
                }
                GgmlType::F16 => half(data, 2 * i),
                GgmlType::Q8_0 => {
                    let b = &data[blk * 34..blk * 34 + 34];
                    half(b, 0) * (b[2 + j] as i8) as f64
                }
                GgmlType::Q4_0 => {
                    let b = &data[blk * 18..blk * 18 + 18];
                    half(b, 0) * (nib(&b[2..]) as f64 - 8.0)
                }
                GgmlType::Q4_1 => {
                    let b = &data[blk * 20..blk * 20 + 20];
                    half(b, 0) * nib(&b[4..]) as f64 + half(b, 2)
                }
                _ => unreachable!(),
            }
        })
        .collect()
}

fn random_values(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect()
}

/// The file the robustness tests start from: every value type and every supported
/// tensor type, plus an unsupported one.
fn sample_file() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", GgufValue::String("llama".into()))
        .metadata("a.u32", GgufValue::U32(7))
        .metadata("a.f32", GgufValue::F32(1e-5))
        .metadata("a.bool", GgufValue::Bool(true))
        .metadata(
            "a.strs",
            GgufValue::Array(vec![
                GgufValue::String("x y".into()),
                GgufValue::String("é".into()),
            ]),
        )
        .metadata(
            "a.i32s",
            GgufValue::Array(vec![GgufValue::I32(-1), GgufValue::I32(3)]),
        );
    for (i, ty) in GgmlType::SUPPORTED.iter().enumerate() {
        w.tensor(
            &format!("t{i}"),
            &[2, 32],
            &random_values(&mut rng, 64),
            *ty,
        )
        .unwrap();
    }
    w.tensor_raw("k", &[256], GgmlType(14), vec![0; 210])
        .unwrap();
    w.to_bytes().unwrap()
}

// --- half floats ---------------------------------------------------------------------

#[test]
fn f16_conversions_round_trip_and_round_to_even() {
    for h in 0..=u16::MAX {
        let v = f16_to_f64(h);
        if (h >> 10) & 31 != 31 {
            assert_eq!(v, half(&h.to_le_bytes(), 0), "{h:#x}");
        }
        if !v.is_nan() {
            assert_eq!(f32_to_f16(v as f32), h, "{h:#x} = {v}");
        }
    }
    assert_eq!(f16_to_f64(0x3c00), 1.0);
    assert_eq!(f16_to_f64(0xc000), -2.0);
    assert_eq!(f16_to_f64(0x7bff), 65504.0);
    assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
    assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
    assert!(f16_to_f64(0x7e00).is_nan());
    // Ties to even; overflow to infinity; underflow to zero.
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    assert_eq!(f32_to_f16(65520.0), 0x7c00);
    assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
    assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
    assert_eq!(f32_to_f16(-1e-30), 0x8000);
    assert!(f16_to_f64(f32_to_f16(f32::NAN)).is_nan());
}

// --- tensors -------------------------------------------------------------------------

#[test]
fn every_supported_type_round_trips_and_matches_its_definition() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let shape = [3usize, 64];
    let values = random_values(&mut rng, 192);
    let mut w = GgufWriter::new();
    for ty in GgmlType::SUPPORTED {
        w.tensor(&format!("w.{ty}"), &shape, &values, ty).unwrap();
    }
    let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensor_names().count(), 5);
    for ty in GgmlType::SUPPORTED {
        let name = format!("w.{ty}");
        let info = g.tensor_info(&name).unwrap();
        assert_eq!(info.dims, vec![64, 3]);
        assert_eq!(info.ggml_type, ty);
        assert_eq!(info.offset % 32, 0);
        assert_eq!(g.tensor_shape(&name).unwrap(), vec![3, 64]);
        let t = g.tensor_f64(&name).unwrap();
        assert_eq!(t.shape(), &[3, 64]);
        let expect = reference_dequant(ty, g.tensor_bytes(&name).unwrap(), 192);
        assert_eq!(t.data(), &expect[..], "{ty}");
        // And close to the values written: exact for F32, the half rounding for F16,
        // within one quantisation step for the block types.
        let tol = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 3.0 * 2f64.powi(-11),
            GgmlType::Q8_0 => 3.0 / 127.0,
            _ => 6.0 / 15.0 + 1e-3,
        };
        for (a, b) in t.data().iter().zip(&values) {
            assert!((a - *b as f64).abs() <= tol, "{ty}: {a} vs {b}");
        }
    }
}

#[test]
fn hand_computed_blocks() {
    // Q8_0: d = 0.5 (0x3800), q = -128, -1, 0, 1, 127, then zeros.
    let mut q8 = vec![0x00, 0x38, 0x80, 0xff, 0x00, 0x01, 0x7f];
    q8.resize(34, 0);
    // Q4_0: d = 2.0 (0x4000); qs[0] = 0x2f: element 0 = 2 (15 - 8) = 14, element 16 =
    // 2 (2 - 8) = -12; other qs 0x88: 0.
    let mut q40 = vec![0x00, 0x40, 0x2f];
    q40.resize(18, 0x88);
    // Q4_1: d = 1.0, m = -1.0 (0xbc00); qs[1] = 0x50: element 1 = -1, element 17 = 4;
    // other qs 0x11: 0.
    let mut q41 = vec![0x00, 0x3c, 0x00, 0xbc, 0x11, 0x50];
    q41.resize(20, 0x11);
    let mut w = GgufWriter::new();
    w.tensor_raw("q8", &[32], GgmlType::Q8_0, q8).unwrap();
    w.tensor_raw("q40", &[32], GgmlType::Q4_0, q40).unwrap();
    w.tensor_raw("q41", &[32], GgmlType::Q4_1, q41).unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    let q8 = g.tensor_f64("q8").unwrap();
    assert_eq!(&q8.data()[..6], &[-64.0, -0.5, 0.0, 0.5, 63.5, 0.0]);
    let q40 = g.tensor_f64("q40").unwrap();
    assert_eq!(
        (q40.data()[0], q40.data()[16], q40.data()[1]),
        (14.0, -12.0, 0.0)
    );
    let q41 = g.tensor_f64("q41").unwrap();
    assert_eq!(
        (q41.data()[1], q41.data()[17], q41.data()[0]),
        (-1.0, 4.0, 0.0)
    );
}

/// Input and output bytes from the `gguf` Python package 0.19 (`gguf.quants.quantize`),
/// whose quantisers follow ggml's reference ones.
#[test]
fn quantizers_match_the_gguf_package() {
    const X: [u32; 64] = [
        0x00000000, 0x3f97a90b, 0x400e4366, 0x403f2c95, 0x4058cf23, 0x40589099, 0x403f5730,
        0x3fc93ba8, 0x3f244c45, 0xbeb948dc, 0xbfa50e9d, 0xc00020c6, 0xc018ebd0, 0xc018afa1,
        0xc02b636b, 0xbff43028, 0xbf5da27e, 0x3ea4113a, 0x3fc07f31, 0x40226d2f, 0x4052f3b3,
        0x403f52c5, 0x403e9998, 0x4024f22e, 0x3fed664e, 0x3f6bf277, 0xbda7d705, 0xbf80df26,
        0xc01a8222, 0xc032de6d, 0xc0322773, 0xc0179838, 0xbfcbd675, 0xbf0befa7, 0x3f24112a,
        0x3f8fba0f, 0x4009c89d, 0x4039ebf8, 0x4052a0ee, 0x40516d32, 0x00000000, 0x4008c74c,
        0x3f0063df, 0xbf0082c1, 0xbfb646d8, 0xc00814db, 0xc020020a, 0xc01ed033, 0xc003cafd,
        0xbffd1353, 0xbf6d6cd4, 0x3e85ccc7, 0x3fb88cd1, 0x401def49, 0x404daefa, 0x4065ecd0,
        0x403771d0, 0x401cef8d, 0x3fdc1af0, 0x3f4806f3, 0xbe635665, 0xbf921277, 0xbfeb4b78,
        0xc039f03e,
    ];
    let x: Vec<f32> = X.iter().map(|&b| f32::from_bits(b)).collect();
    assert_eq!(
        quantize_q8_0(&x),
        hex("d426002c53707f7f703b18f2d0b5a6a79cb8e00c385f7c7070614623fddaa59798a73e27c8ed17284c677474004c12eeceb5a8a8b7badf093357727f65573d1cf8d8bf99")
    );
    assert_eq!(
        quantize_q4_0(&x),
        hex("c6b6a87543210010112446698badeefefeed2fb7dcc9a77553321101283347698bbdceee")
    );
    assert_eq!(
        quantize_q4_1(&x),
        hex("983697c1578aacdeffefeedbb896744211010012ee36d0c123255879accdeefed7ccb89663422101")
    );
    // The package's dequantised first values (computed in f32 there; exact here).
    let mut out = Vec::new();
    dequantize_into(GgmlType::Q4_1, &quantize_q4_1(&x), &mut out).unwrap();
    assert_eq!(
        &out[..4],
        &[0.08984375, 1.326171875, 2.150390625, 2.974609375]
    );
    // All-zero blocks quantise to d = 0 and dequantise to 0.
    for q in [
        quantize_q8_0(&[0.0; 32]),
        quantize_q4_0(&[0.0; 32]),
        quantize_q4_1(&[0.0; 32]),
    ] {
        assert_eq!(f16_to_f64(u16::from_le_bytes([q[0], q[1]])), 0.0);
    }
}

#[test]
fn unsupported_and_missing_tensors_are_named() {
    let g = GgufFile::from_bytes(sample_file()).unwrap();
    let e = err_text(g.tensor_f64("k"));
    assert!(
        e.contains("GGUF tensor k: type Q6_K is not supported (F32, F16, Q8_0, Q4_0, Q4_1 are)"),
        "{e}"
    );
    let e = err_text(g.tensor_f64("nope"));
    assert!(e.contains("GGUF tensor nope is missing"), "{e}");
    assert!(err_text(g.tensor_shape("nope")).contains("nope"));

    // A type id ggml does not know: the table accepts it, dequantising names it.
    let mut w = GgufWriter::new();
    w.tensor_raw("odd", &[4], GgmlType(99), vec![1, 2, 3])
        .unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    let e = err_text(g.tensor_f64("odd"));
    assert!(
        e.contains("tensor odd: type unknown type id 99 is not supported"),
        "{e}"
    );
}

// --- metadata ------------------------------------------------------------------------

#[test]
fn metadata_of_every_type_round_trips() {
    let values = vec![
        ("u8", GgufValue::U8(200)),
        ("i8", GgufValue::I8(-100)),
        ("u16", GgufValue::U16(60000)),
        ("i16", GgufValue::I16(-30000)),
        ("u32", GgufValue::U32(4_000_000_000)),
        ("i32", GgufValue::I32(-2_000_000_000)),
        ("u64", GgufValue::U64(u64::MAX)),
        ("i64", GgufValue::I64(i64::MIN)),
        ("f32", GgufValue::F32(1e-5)),
        ("f64", GgufValue::F64(std::f64::consts::PI)),
        ("bool", GgufValue::Bool(false)),
        ("str", GgufValue::String("café 東京 🙂".into())),
        ("empty", GgufValue::String(String::new())),
        (
            "strs",
            GgufValue::Array(vec![
                GgufValue::String("a b".into()),
                GgufValue::String("Ġc".into()),
            ]),
        ),
        (
            "f32s",
            GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-2.0)]),
        ),
        (
            "i32s",
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-3)]),
        ),
        ("u8s", GgufValue::Array(vec![])),
        (
            "nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::U64(1)]),
                GgufValue::Array(vec![GgufValue::U64(2), GgufValue::U64(3)]),
            ]),
        ),
    ];
    for version in [2, 3] {
        let mut w = GgufWriter::new();
        w.version(version);
        for (k, v) in &values {
            w.metadata(*k, v.clone());
        }
        let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(g.version(), version);
        for (k, v) in &values {
            assert_eq!(g.metadata(k), Some(v), "{k}");
        }
        let keys: Vec<&str> = g.metadata_entries().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), values.len());
        assert_eq!(g.tensor_names().count(), 0);
        // Typed getters.
        assert_eq!(g.get_u32("u8").unwrap(), 200);
        assert_eq!(g.get_u32("u16").unwrap(), 60000);
        assert_eq!(g.get_u32("u32").unwrap(), 4_000_000_000);
        assert_eq!(g.get_u64("u64").unwrap(), u64::MAX);
        assert_eq!(g.get_i64("i64").unwrap(), i64::MIN);
        assert_eq!(g.get_f32("f32").unwrap(), 1e-5);
        assert_eq!(g.get_f64("f32").unwrap(), 1e-5f32 as f64);
        assert!(!g.get_bool("bool").unwrap());
        assert_eq!(g.get_str("str").unwrap(), "café 東京 🙂");
        assert_eq!(g.get_str_array("strs").unwrap(), vec!["a b", "Ġc"]);
        assert_eq!(g.get_f32_array("f32s").unwrap(), vec![0.5, -2.0]);
        assert_eq!(g.get_i32_array("i32s").unwrap(), vec![1, -3]);
        assert_eq!(g.get_u32_array("u8s").unwrap(), Vec::<u32>::new());
        // Errors name the key and say what was wrong.
        for (r, want) in [
            (
                g.get_u32("i8").map(|_| ()),
                "metadata i8: expected an integer in u32 range",
            ),
            (
                g.get_u32("u64").map(|_| ()),
                "metadata u64: expected an integer in u32 range",
            ),
            (
                g.get_u32("str").map(|_| ()),
                "metadata str: expected an integer",
            ),
            (
                g.get_str("u8").map(|_| ()),
                "metadata u8: expected a string, found u8",
            ),
            (
                g.get_f32("bool").map(|_| ()),
                "metadata bool: expected a float",
            ),
            (
                g.get_u32("missing.key").map(|_| ()),
                "GGUF metadata missing.key is missing",
            ),
            (
                g.get_str_array("i32s").map(|_| ()),
                "metadata i32s[0]: expected an array of strings",
            ),
            (
                g.get_i32_array("str").map(|_| ()),
                "metadata str: expected an array of integers",
            ),
        ] {
            let e = err_text(r);
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = GgufWriter::new();
    w.alignment(64);
    w.tensor("a", &[1, 3], &[1.0, 2.0, 3.0], GgmlType::F32)
        .unwrap();
    w.tensor("b", &[2], &[4.0, 5.0], GgmlType::F16).unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_info("b").unwrap().offset, 64);
    assert_eq!(g.tensor_f64("a").unwrap().data(), &[1.0, 2.0, 3.0]);
    assert_eq!(g.tensor_f64("b").unwrap().data(), &[4.0, 5.0]);
}

#[test]
fn read_from_a_file_names_the_path() {
    let dir = std::env::temp_dir().join(format!("tessera-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.gguf");
    let mut w = GgufWriter::new();
    w.tensor("x", &[32], &[127.0 / 128.0; 32], GgmlType::Q8_0)
        .unwrap();
    w.write(&path).unwrap();
    let g = GgufFile::read(&path).unwrap();
    assert_eq!(g.tensor_f64("x").unwrap().data(), &[127.0 / 128.0; 32]);
    let e = err_text(g.tensor_f64("y"));
    assert!(e.contains("t.gguf"), "{e}");
    let e = err_text(GgufFile::read(&dir.join("absent.gguf")));
    assert!(e.contains("absent.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- robustness ----------------------------------------------------------------------

#[test]
fn every_truncation_errors() {
    let bytes = sample_file();
    // The last tensor (the Q6_K one) ends exactly at the end of the file.
    for n in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..n].to_vec());
        assert!(
            r.is_err(),
            "a prefix of {n} of {} bytes parsed",
            bytes.len()
        );
    }
    let e = err_text(GgufFile::from_bytes(bytes[..bytes.len() - 1].to_vec()));
    assert!(
        e.contains("tensor k: data at offset") && e.contains("beyond the end"),
        "{e}"
    );
    let e = err_text(GgufFile::from_bytes(bytes[..30].to_vec()));
    assert!(e.contains("field metadata_kv_count"), "{e}");
    assert!(GgufFile::from_bytes(bytes).is_ok());
}

#[test]
fn inconsistent_files_name_the_field() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GGML\x03\0\0\0".to_vec(), "bad magic"),
        (b"GG".to_vec(), "the magic needs 4 bytes"),
        (
            Raw::header(1, 0, 0).0,
            "GGUF version 1 is not supported (2 and 3 are)",
        ),
        (Raw::header(4, 0, 0).0, "GGUF version 4 is not supported"),
        (Raw::header(3u32.swap_bytes(), 0, 0).0, "big-endian"),
        (
            Raw::header(3, 1 << 60, 0).0,
            "field tensor_count: 1152921504606846976 tensors cannot fit",
        ),
        (Raw::header(3, 0, u64::MAX).0, "field metadata_kv_count"),
        (
            Raw::header(3, 0, 1).u64(1 << 60).bytes(&[0; 16]).0,
            "metadata key #0: string length 1152921504606846976",
        ),
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(8)
                .u64(1 << 60)
                .bytes(&[0; 8])
                .0,
            "metadata k: string length",
        ),
        (
            Raw::header(3, 0, 1).str("k").u32(13).bytes(&[0; 8]).0,
            "metadata k: unknown value type 13",
        ),
        (
            Raw::header(3, 0, 1).str("k").u32(7).bytes(&[2]).0,
            "metadata k: bool byte is 2",
        ),
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(9)
                .u32(8)
                .u64(1 << 40)
                .bytes(&[0; 16])
                .0,
            "metadata k: array of 1099511627776 string values cannot fit",
        ),
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(9)
                .u32(77)
                .u64(1)
                .bytes(&[0; 16])
                .0,
            "metadata k: unknown array element type 77",
        ),
        (
            Raw::header(3, 0, 2)
                .str("k")
                .u32(4)
                .u32(1)
                .str("k")
                .u32(4)
                .u32(2)
                .0,
            "metadata k: key appears twice",
        ),
        (
            Raw::header(3, 0, 1)
                .str("general.alignment")
                .u32(4)
                .u32(24)
                .0,
            "metadata general.alignment",
        ),
        (
            Raw::header(3, 1, 0).str("t").u32(5).bytes(&[0; 64]).0,
            "tensor t: n_dims is 5, at most 4",
        ),
        (
            Raw::header(3, 1, 0)
                .str("t")
                .u32(2)
                .u64(1 << 40)
                .u64(1 << 40)
                .u32(0)
                .u64(0)
                .0,
            "tensor t: the product of dims [1099511627776, 1099511627776] overflows",
        ),
        (
            Raw::header(3, 1, 0).str("t").u32(1).u64(48).u32(8).u64(0).0,
            "tensor t: dims[0] = 48 is not a multiple of the Q8_0 block size 32",
        ),
        (
            Raw::header(3, 1, 0)
                .str("t")
                .u32(1)
                .u64(4)
                .u32(0)
                .u64(8)
                .bytes(&[0; 64])
                .0,
            "tensor t: offset 8 is not a multiple of the alignment 32",
        ),
        (
            Raw::header(3, 1, 0)
                .str("t")
                .u32(1)
                .u64(4)
                .u32(0)
                .u64(32)
                .bytes(&[0; 32])
                .0,
            "tensor t: data at offset",
        ),
        (
            Raw::header(3, 1, 0)
                .str("t")
                .u32(1)
                .u64(1 << 61)
                .u32(0)
                .u64(0)
                .bytes(&[0; 32])
                .0,
            "tensor t: data",
        ),
        (
            Raw::header(3, 2, 0)
                .str("t")
                .u32(1)
                .u64(1)
                .u32(0)
                .u64(0)
                .str("t")
                .u32(1)
                .u64(1)
                .u32(0)
                .u64(0)
                .bytes(&[0; 64])
                .0,
            "tensor t: name appears twice",
        ),
    ];
    for (bytes, want) in cases {
        let e = err_text(GgufFile::from_bytes(bytes));
        assert!(e.contains(want), "error {e:?} does not contain {want:?}");
    }
    // Deeply nested arrays stop at the depth limit instead of exhausting the stack.
    let mut raw = Raw::header(3, 0, 1).str("k").u32(9);
    for _ in 0..100 {
        raw = raw.u32(9).u64(1);
    }
    let e = err_text(GgufFile::from_bytes(raw.bytes(&[0; 64]).0));
    assert!(e.contains("nested deeper"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let base = sample_file();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let (mut parsed, mut failed) = (0, 0);
    for case in 0..3000 {
        let mut b = base.clone();
        for _ in 0..rng.gen_range(1..=4) {
            let i = rng.gen_range(0..b.len());
            // Mostly flip into the header and tables, where the structure lives.
            let i = if case % 2 == 0 {
                i % 400.min(b.len())
            } else {
                i
            };
            b[i] = match rng.gen_range(0..3) {
                0 => b[i] ^ (1 << rng.gen_range(0..8)),
                1 => rng.gen(),
                _ => 0xff,
            };
        }
        if case % 5 == 0 {
            b.truncate(rng.gen_range(0..=b.len()));
        }
        match GgufFile::from_bytes(b) {
            Ok(g) => {
                parsed += 1;
                let names: Vec<String> = g.tensor_names().map(String::from).collect();
                for n in names {
                    let _ = g.tensor_f64(&n);
                }
                for (k, _) in g.metadata_entries() {
                    let _ = (
                        g.get_u32(k),
                        g.get_str(k),
                        g.get_str_array(k),
                        g.get_f32_array(k),
                    );
                }
            }
            Err(_) => failed += 1,
        }
    }
    assert!(parsed > 0 && failed > 0, "parsed {parsed}, failed {failed}");
}

/// The real SmolLM2-135M-Instruct file (scripts/fetch-smollm2.sh), when present: every
/// tensor parses and dequantises, the hyperparameters are those of RECIPES.md, and a few
/// tensors agree with tests/data/smollm2_tensors.json (the `gguf` package's values).
#[test]
fn smollm2_file_parses_and_dequantises() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!(
            "SKIP: {} is absent (run scripts/fetch-smollm2.sh)",
            model.display()
        );
        return;
    }
    let g = GgufFile::read(&model).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensor_names().count(), 272);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    for (key, want) in [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.rope.dimension_count", 64),
        ("llama.vocab_size", 49152),
    ] {
        assert_eq!(g.get_u32(key).unwrap(), want, "{key}");
    }
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert!(g.tensor_info("output.weight").is_none());
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut elements = 0usize;
    let names: Vec<String> = g.tensor_names().map(String::from).collect();
    for name in &names {
        let info = g.tensor_info(name).unwrap();
        *counts.entry(info.ggml_type.to_string()).or_default() += 1;
        let t = g.tensor_f64(name).unwrap();
        assert!(t.data().iter().all(|v| v.is_finite()), "{name}");
        elements += t.len();
    }
    eprintln!("SmolLM2: 272 tensors, {elements} elements, types {counts:?}");
    assert_eq!(counts["Q4_1"], 210);
    assert_eq!(counts["F32"], 61);
    assert_eq!(counts["Q8_0"], 1);
    assert_eq!(
        g.tensor_shape("token_embd.weight").unwrap(),
        vec![49152, 576]
    );
    assert_eq!(
        g.tensor_shape("blk.0.attn_k.weight").unwrap(),
        vec![192, 576]
    );
    assert_eq!(
        g.tensor_shape("blk.0.ffn_down.weight").unwrap(),
        vec![576, 1536]
    );

    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/data/smollm2_tensors.json")).unwrap(),
    )
    .unwrap();
    for (name, r) in reference["tensors"].as_object().unwrap() {
        let t = g.tensor_f64(name).unwrap();
        assert_eq!(
            t.shape(),
            &serde_json::from_value::<Vec<usize>>(r["shape"].clone()).unwrap()[..]
        );
        assert_eq!(
            g.tensor_info(name).unwrap().ggml_type.to_string(),
            r["type"].as_str().unwrap()
        );
        // The package computes in f32: equal to about 1e-7 relative.
        for (a, b) in t.data().iter().zip(r["first"].as_array().unwrap()) {
            let b = b.as_f64().unwrap();
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{name}: {a} vs {b}"
            );
        }
        let sum: f64 = t.data().iter().sum();
        let sum_abs: f64 = t.data().iter().map(|v| v.abs()).sum();
        let (rs, ra) = (r["sum"].as_f64().unwrap(), r["sum_abs"].as_f64().unwrap());
        assert!((sum - rs).abs() <= 1e-6 * ra, "{name}: sum {sum} vs {rs}");
        assert!(
            (sum_abs - ra).abs() <= 1e-6 * ra,
            "{name}: sum_abs {sum_abs} vs {ra}"
        );
    }
}
