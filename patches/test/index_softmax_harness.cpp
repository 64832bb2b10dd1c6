// Test harness for the IndexSoftmax kernel that patches/0001-index-softmax.patch adds to ACL.
// tests/build_script.rs extracts the patch's new files, compiles them with this harness against
// Debian's ACL 20.08 headers (the kernel only uses API that 20.08 and 52.x share), runs it under
// qemu-aarch64 and compares the output with src/reference.rs.
//
//   harness rows IN OUT   IN: blocks, each: u32 T, u32 width, u32 rows, u32 finish (0 normalized,
//                         1 deferred, 2 paper-sim), u32 N, N table bytes, rows u32 valid lengths,
//                         rows * width i32 scores (all little endian).
//                         OUT per block: rows * width u8 from index_softmax::row, then rows u32
//                         row sums. For whole rows with the default table and the normalized
//                         finish it also checks that the kernel entry point (ITensor + Window,
//                         as CpuSoftmaxKernel runs it) writes the same bytes.
//   harness validate      one line per case: "<name> <1 if validate() accepts, else 0>".
#include "src/cpu/kernels/softmax/generic/neon/index_softmax.h"

#include "arm_compute/core/Helpers.h"
#include "arm_compute/core/TensorInfo.h"
#include "arm_compute/runtime/Tensor.h"

#include <cstdio>
#include <cstring>
#include <vector>

using namespace arm_compute;

namespace
{
bool read_all(const char *path, std::vector<unsigned char> &bytes)
{
    FILE *f = std::fopen(path, "rb");
    if (f == nullptr)
    {
        return false;
    }
    unsigned char buf[65536];
    size_t        n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0)
    {
        bytes.insert(bytes.end(), buf, buf + n);
    }
    std::fclose(f);
    return true;
}

struct Reader
{
    const std::vector<unsigned char> &b;
    size_t                            at;
    bool                              ok;

    uint32_t u32()
    {
        uint32_t v = 0;
        if (at + 4 > b.size())
        {
            ok = false;
            return 0;
        }
        std::memcpy(&v, b.data() + at, 4);
        at += 4;
        return v;
    }
    bool bytes(void *dst, size_t n)
    {
        if (at + n > b.size())
        {
            ok = false;
            return false;
        }
        std::memcpy(dst, b.data() + at, n);
        at += n;
        return true;
    }
};

// The kernel entry point on ACL tensors, with the window CpuSoftmaxKernel builds for axis 0
// (X collapsed to one step, rows in Y), must write what row() wrote.
int check_entry_point(const std::vector<int32_t> &scores, const std::vector<uint8_t> &out, uint32_t t, uint32_t width,
                      uint32_t rows)
{
    Tensor src, dst;
    src.allocator()->init(TensorInfo(TensorShape(width, rows), 1, DataType::S32));
    dst.allocator()->init(TensorInfo(TensorShape(width, rows), 1, DataType::U8));
    src.allocator()->allocate();
    dst.allocator()->allocate();
    for (uint32_t r = 0; r < rows; ++r)
    {
        std::memcpy(src.ptr_to_element(Coordinates(0, r)), scores.data() + static_cast<size_t>(r) * width, 4 * width);
    }
    const Status st = cpu::validate_index_softmax(*src.info(), *dst.info(), static_cast<float>(t), 0, false);
    if (!bool(st))
    {
        std::fprintf(stderr, "validate rejected the test tensors: %s\n", st.error_description().c_str());
        return 3;
    }
    Window win = calculate_max_window(*dst.info(), Steps());
    win.set(Window::DimX, Window::Dimension(0, 1, 1));
    cpu::neon_s32_index_softmax(&src, nullptr, &dst, static_cast<float>(t), 0, win, nullptr);
    for (uint32_t r = 0; r < rows; ++r)
    {
        if (std::memcmp(dst.ptr_to_element(Coordinates(0, r)), out.data() + static_cast<size_t>(r) * width, width) != 0)
        {
            std::fprintf(stderr, "kernel entry point and row() differ in row %u\n", r);
            return 4;
        }
    }
    return 0;
}

int rows_mode(const char *in_path, const char *out_path)
{
    std::vector<unsigned char> in;
    if (!read_all(in_path, in))
    {
        std::fprintf(stderr, "cannot read %s\n", in_path);
        return 2;
    }
    std::vector<unsigned char> result;
    Reader                     rd{in, 0, true};
    while (rd.at < in.size())
    {
        const uint32_t t = rd.u32(), width = rd.u32(), rows = rd.u32(), finish = rd.u32(), n = rd.u32();
        cpu::index_softmax::Params p{};
        p.threshold  = t;
        p.finish     = static_cast<cpu::index_softmax::Finish>(finish);
        p.table_size = n;
        if (!rd.ok || n > cpu::index_softmax::max_entries || !rd.bytes(p.table, n) || width == 0 || rows == 0)
        {
            std::fprintf(stderr, "bad block header at byte %zu\n", rd.at);
            return 2;
        }
        if (!cpu::index_softmax::params_valid(p))
        {
            std::fprintf(stderr, "invalid parameters: T=%u N=%u finish=%u\n", t, n, finish);
            return 2;
        }
        std::vector<uint32_t> valid(rows);
        std::vector<int32_t>  scores(static_cast<size_t>(width) * rows);
        if (!rd.bytes(valid.data(), 4 * valid.size()) || !rd.bytes(scores.data(), 4 * scores.size()))
        {
            std::fprintf(stderr, "truncated block\n");
            return 2;
        }
        std::vector<uint8_t>  out(scores.size());
        std::vector<uint32_t> sums(rows);
        bool                  whole = true;
        for (uint32_t r = 0; r < rows; ++r)
        {
            whole   = whole && valid[r] == width;
            sums[r] = cpu::index_softmax::row(scores.data() + static_cast<size_t>(r) * width,
                                              out.data() + static_cast<size_t>(r) * width, width, valid[r], p);
        }
        // The entry point takes T through a float: only thresholds exact in f32.
        const bool exact_beta = static_cast<uint32_t>(static_cast<float>(t)) == t;
        if (whole && exact_beta && p.finish == cpu::index_softmax::Finish::normalized &&
            n == cpu::index_softmax::num_entries &&
            std::memcmp(p.table, cpu::index_softmax::lut, n) == 0)
        {
            const int rc = check_entry_point(scores, out, t, width, rows);
            if (rc != 0)
            {
                return rc;
            }
        }
        result.insert(result.end(), out.begin(), out.end());
        const auto *sb = reinterpret_cast<const unsigned char *>(sums.data());
        result.insert(result.end(), sb, sb + 4 * sums.size());
    }

    FILE *f = std::fopen(out_path, "wb");
    if (f == nullptr || std::fwrite(result.data(), 1, result.size(), f) != result.size())
    {
        std::fprintf(stderr, "cannot write %s\n", out_path);
        return 2;
    }
    std::fclose(f);
    return 0;
}

void check(const char *name, const ITensorInfo &src, const ITensorInfo &dst, float beta, int axis, bool is_log)
{
    std::printf("%s %d\n", name, bool(cpu::validate_index_softmax(src, dst, beta, axis, is_log)) ? 1 : 0);
}

int validate_mode()
{
    const TensorShape shape(64U, 8U);
    const TensorInfo  s32(shape, 1, DataType::S32);
    const TensorInfo  u8(shape, 1, DataType::U8);
    const TensorInfo  q8(shape, 1, DataType::QASYMM8, QuantizationInfo(1.f / 255.f, 0));
    const TensorInfo  q8_256(shape, 1, DataType::QASYMM8, QuantizationInfo(1.f / 256.f, 0));
    const TensorInfo  u8_other(TensorShape(63U, 8U), 1, DataType::U8);
    const TensorInfo  f32(shape, 1, DataType::F32);
    const TensorInfo  empty;
    const TensorInfo  wide_s32(TensorShape(1U << 24, 1U), 1, DataType::S32);
    check("s32_to_u8", s32, u8, 1234.f, 0, false);
    check("s32_to_qasymm8", s32, q8, 1.f, 0, false);
    check("largest_threshold", s32, u8, 1073741824.f, 0, false);
    check("qasymm8_scale_1_256", s32, q8_256, 1234.f, 0, false);
    check("threshold_zero", s32, u8, 0.f, 0, false);
    check("threshold_fraction", s32, u8, 2.5f, 0, false);
    check("threshold_too_large", s32, u8, 2147483648.f, 0, false);
    check("axis_1", s32, u8, 1234.f, 1, false);
    check("log", s32, u8, 1234.f, 0, true);
    check("output_uninitialised", s32, empty, 1234.f, 0, false);
    check("shape_mismatch", s32, u8_other, 1234.f, 0, false);
    check("output_s32", s32, s32, 1234.f, 0, false);
    check("input_f32", f32, u8, 1234.f, 0, false);
    check("row_too_long", wide_s32, TensorInfo(TensorShape(1U << 24, 1U), 1, DataType::U8), 1234.f, 0, false);
    return 0;
}
} // namespace

int main(int argc, char **argv)
{
    if (argc == 4 && std::strcmp(argv[1], "rows") == 0)
    {
        return rows_mode(argv[2], argv[3]);
    }
    if (argc == 2 && std::strcmp(argv[1], "validate") == 0)
    {
        return validate_mode();
    }
    std::fprintf(stderr, "usage: %s rows IN OUT | validate\n", argv[0]);
    return 2;
}
