// row_kernels.cpp: IndexSoftmax and the prefix mask as out-of-tree ACL kernels. The arithmetic
// follows docs/numerics.md section 3 line by line (exact integers for Normalized and Deferred, the
// simulation's f32 steps for PaperSim); tests/acl.rs checks it bit for bit against the crate's
// scalar reference.
#include "row_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

using namespace arm_compute;

namespace intattention_acl
{
namespace
{
// docs/numerics.md section 3: thresholds and row lengths the exact arithmetic is proved for.
constexpr int32_t  max_threshold = int32_t(1) << 30;
constexpr uint64_t max_row_len   = uint64_t(1) << 24;

uint8_t *row_ptr(const ITensor *t, size_t r)
{
    const ITensorInfo *info = t->info();
    return t->buffer() + info->offset_first_element_in_bytes() + r * info->strides_in_bytes()[1];
}

bool is_matrix(const ITensorInfo *info)
{
    return info->num_dimensions() <= 2;
}

std::string shape_str(const ITensorInfo *info)
{
    const TensorShape &s = info->tensor_shape();
    return std::to_string(s[1]) + " x " + std::to_string(s[0]);
}
} // namespace

void RowKernel::configure_rows(size_t rows, size_t cols)
{
    _rows = rows;
    _cols = cols;
    _limits.clear();
    Window win;
    win.set(Window::DimX, Window::Dimension(0, 1, 1));
    win.set(Window::DimY, Window::Dimension(0, static_cast<int>(rows), 1));
    IKernel::configure(win);
}

std::string IndexSoftmaxKernel::validate(const ITensorInfo *scores, const ITensorInfo *probs,
                                         const ITensorInfo *row_sums, const ia_index_softmax_params &p)
{
    if(scores == nullptr || probs == nullptr)
    {
        return "scores and probs are required";
    }
    if(scores->data_type() != DataType::S32)
    {
        return "scores must be S32";
    }
    if(probs->data_type() != DataType::U8 && probs->data_type() != DataType::QASYMM8)
    {
        return "probs must be U8 or QASYMM8";
    }
    if(!is_matrix(scores) || scores->tensor_shape() != probs->tensor_shape())
    {
        return "scores (" + shape_str(scores) + ") and probs (" + shape_str(probs) + ") must be matrices of one shape";
    }
    const size_t rows = scores->tensor_shape()[1];
    const size_t cols = scores->tensor_shape()[0];
    if(cols >= max_row_len)
    {
        return "rows of 2^24 or more entries would overflow the u32 row sum";
    }
    if(p.threshold < 1 || p.threshold > max_threshold)
    {
        return "threshold T must be in [1, 2^30], got " + std::to_string(p.threshold);
    }
    const uint32_t n = p.table_len;
    if(n < 16 || n > 256 || (n & (n - 1)) != 0)
    {
        return "table length must be 2^b with b in 4..=8, got " + std::to_string(n);
    }
    if(p.variant != IA_INDEX_SOFTMAX_NORMALIZED && p.variant != IA_INDEX_SOFTMAX_DEFERRED
       && p.variant != IA_INDEX_SOFTMAX_PAPER_SIM)
    {
        return "unknown IndexSoftmax variant " + std::to_string(p.variant);
    }
    if(p.variant == IA_INDEX_SOFTMAX_DEFERRED && row_sums == nullptr)
    {
        return "the Deferred variant needs a row_sums tensor (its outputs are unnormalized)";
    }
    if(row_sums != nullptr)
    {
        if(row_sums->data_type() != DataType::S32 && row_sums->data_type() != DataType::U32)
        {
            return "row_sums must be S32 or U32";
        }
        if(row_sums->num_dimensions() > 1 || row_sums->tensor_shape()[0] != rows)
        {
            return "row_sums must have one entry per row (" + std::to_string(rows) + ")";
        }
        if(row_sums->data_type() == DataType::S32 && uint64_t(cols) * 255 > uint64_t(std::numeric_limits<int32_t>::max()))
        {
            return "an S32 row sum can overflow for rows this long: use U32";
        }
    }
    return std::string();
}

void IndexSoftmaxKernel::configure(const ITensor *scores, ITensor *probs, ITensor *row_sums,
                                   const ia_index_softmax_params &params)
{
    _scores = scores;
    _probs  = probs;
    _sums   = row_sums;
    _params = params;
    configure_rows(scores->info()->tensor_shape()[1], scores->info()->tensor_shape()[0]);
}

void IndexSoftmaxKernel::row(size_t r, const int32_t *s, uint8_t *p, uint32_t *sum_out) const
{
    const size_t   cols  = this->cols();
    const size_t   valid = valid_len(r);
    const int64_t  t     = _params.threshold;
    const uint64_t n1    = _params.table_len - 1;
    const uint8_t *lut   = _params.table;

    if(valid == 0)
    {
        std::fill(p, p + cols, uint8_t(0));
        *sum_out = 0;
        return;
    }
    int32_t m = s[0];
    for(size_t j = 1; j < valid; ++j)
    {
        m = std::max(m, s[j]);
    }
    uint32_t sum = 0;
    if(_params.variant == IA_INDEX_SOFTMAX_PAPER_SIM)
    {
        const float tf = static_cast<float>(t);
        for(size_t j = 0; j < valid; ++j)
        {
            // m - S in i64: i32::MIN scores are legal.
            const int64_t d   = std::min<int64_t>(int64_t(m) - int64_t(s[j]), t);
            const float   q   = static_cast<float>(d * int64_t(n1)) / tf;
            const uint64_t ix = std::min<uint64_t>(static_cast<uint64_t>(std::trunc(q)), n1);
            p[j]              = lut[ix];
            sum += p[j];
        }
    }
    else
    {
        for(size_t j = 0; j < valid; ++j)
        {
            const uint64_t d  = static_cast<uint64_t>(std::min<int64_t>(int64_t(m) - int64_t(s[j]), t));
            const uint64_t ix = (2 * d * n1 + uint64_t(t)) / (2 * uint64_t(t));
            p[j]              = lut[ix];
            sum += p[j];
        }
    }
    std::fill(p + valid, p + cols, uint8_t(0));
    *sum_out = sum;

    switch(_params.variant)
    {
        case IA_INDEX_SOFTMAX_NORMALIZED:
        {
            // round_half_up(255 e / sum) in exact integers; sum >= 255 since the max entry maps to LUT[0].
            const uint64_t s2 = 2 * uint64_t(sum);
            for(size_t j = 0; j < valid; ++j)
            {
                p[j] = static_cast<uint8_t>((2 * 255 * uint64_t(p[j]) + sum) / s2);
            }
            break;
        }
        case IA_INDEX_SOFTMAX_PAPER_SIM:
        {
            const float fs = static_cast<float>(sum);
            for(size_t j = 0; j < valid; ++j)
            {
                // round_half_even in the default rounding mode.
                p[j] = static_cast<uint8_t>(std::nearbyint(static_cast<float>(uint32_t(p[j]) * 255u) / fs));
            }
            break;
        }
        default:
            break; // Deferred: P = e, the caller divides by the row sum.
    }
}

void IndexSoftmaxKernel::run(const Window &window, const ThreadInfo &info)
{
    (void)info;
    const int start = window.y().start();
    const int end   = window.y().end();
    for(int r = start; r < end; ++r)
    {
        uint32_t sum = 0;
        row(size_t(r), reinterpret_cast<const int32_t *>(row_ptr(_scores, size_t(r))), row_ptr(_probs, size_t(r)), &sum);
        if(_sums != nullptr)
        {
            uint8_t *dst = _sums->buffer() + _sums->info()->offset_first_element_in_bytes()
                           + size_t(r) * _sums->info()->strides_in_bytes()[0];
            // U32 and S32 share the bit pattern for sums below 2^31 (checked in validate).
            *reinterpret_cast<uint32_t *>(dst) = sum;
        }
    }
}

std::string IndexSoftmaxKernel::set_threshold(int32_t threshold)
{
    if(threshold < 1 || threshold > max_threshold)
    {
        return "threshold T must be in [1, 2^30], got " + std::to_string(threshold);
    }
    _params.threshold = threshold;
    return std::string();
}

std::string LogitsKernel::validate(const ITensorInfo *scores)
{
    if(scores == nullptr)
    {
        return "scores are required";
    }
    if(scores->data_type() != DataType::F32 || !is_matrix(scores))
    {
        return "logits must be an F32 matrix";
    }
    return std::string();
}

void LogitsKernel::configure(ITensor *scores)
{
    _scores = scores;
    configure_rows(scores->info()->tensor_shape()[1], scores->info()->tensor_shape()[0]);
}

void LogitsKernel::run(const Window &window, const ThreadInfo &info)
{
    (void)info;
    const size_t cols = this->cols();
    for(int r = window.y().start(); r < window.y().end(); ++r)
    {
        float       *s     = reinterpret_cast<float *>(row_ptr(_scores, size_t(r)));
        const size_t valid = valid_len(size_t(r));
        if(valid == 0)
        {
            // A fully masked row: finite zeros keep ACL's softmax finite; the caller zeroes the
            // row's output, as docs/numerics.md section 2 asks.
            std::fill(s, s + cols, 0.0f);
            continue;
        }
        if(_scale != 1.0f)
        {
            for(size_t j = 0; j < valid; ++j)
            {
                s[j] *= _scale;
            }
        }
        std::fill(s + valid, s + cols, -std::numeric_limits<float>::infinity());
    }
}
} // namespace intattention_acl
