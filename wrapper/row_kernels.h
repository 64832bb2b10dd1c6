// row_kernels.h: the shim's out-of-tree ACL kernels. They derive from ICPPKernel (the one
// kernel base both ACL families install) and run through ACL's scheduler, split over rows.
//
// - IndexSoftmaxKernel: docs/numerics.md section 3 over the rows of an S32 score matrix, used
//   whenever the ACL in use lacks our IndexSoftmax patch (every prebuilt ACL). Its output is
//   bit-identical to the crate's scalar reference.
// - LogitsKernel: scales and masks an F32 score matrix for ACL's float softmax, with a scale
//   that can change between runs (causal and key-padding masks keep a prefix of every row).
#ifndef INTATTENTION_ACL_ROW_KERNELS_H
#define INTATTENTION_ACL_ROW_KERNELS_H

#include "compat.h"
#include "intattention_acl.h"

#include "arm_compute/core/CPP/ICPPKernel.h"
#include "arm_compute/core/ITensor.h"
#include "arm_compute/core/Window.h"

#include <cstdint>
#include <string>
#include <vector>

namespace intattention_acl
{
// Shared by both kernels: a 2-D tensor walked row by row, with optional per-row prefix lengths.
class RowKernel : public arm_compute::ICPPKernel
{
public:
    // Empty means every row is whole. The caller has checked the length and the values.
    void set_row_limits(std::vector<uint32_t> limits)
    {
        _limits = std::move(limits);
    }
    size_t rows() const
    {
        return _rows;
    }
    size_t cols() const
    {
        return _cols;
    }
    bool has_row_limits() const
    {
        return !_limits.empty();
    }
    // The columns of `row` that take part.
    size_t valid_len(size_t row) const
    {
        return _limits.empty() ? _cols : _limits[row];
    }

protected:
    // One window step per row along Y, the whole row in one X step: the scheduler splits rows.
    void configure_rows(size_t rows, size_t cols);

private:
    std::vector<uint32_t> _limits{};
    size_t                _rows{ 0 };
    size_t                _cols{ 0 };
};

class IndexSoftmaxKernel final : public RowKernel
{
public:
    // Empty string when the configuration is valid, else why not.
    static std::string validate(const arm_compute::ITensorInfo *scores, const arm_compute::ITensorInfo *probs,
                                const arm_compute::ITensorInfo *row_sums, const ia_index_softmax_params &params);
    void configure(const arm_compute::ITensor *scores, arm_compute::ITensor *probs, arm_compute::ITensor *row_sums,
                   const ia_index_softmax_params &params);
    void        run(const arm_compute::Window &window, const arm_compute::ThreadInfo &info) override;
    const char *name() const override
    {
        return "IntAttentionIndexSoftmaxKernel";
    }
    // Empty string when T is in range (and then set), else why not.
    std::string set_threshold(int32_t threshold);
    int32_t     threshold() const
    {
        return _params.threshold;
    }

private:
    void row(size_t r, const int32_t *s, uint8_t *p, uint32_t *sum_out) const;

    const arm_compute::ITensor *_scores{ nullptr };
    arm_compute::ITensor       *_probs{ nullptr };
    arm_compute::ITensor       *_sums{ nullptr };
    ia_index_softmax_params     _params{};
};

class LogitsKernel final : public RowKernel
{
public:
    static std::string validate(const arm_compute::ITensorInfo *scores);
    void               configure(arm_compute::ITensor *scores);
    void               run(const arm_compute::Window &window, const arm_compute::ThreadInfo &info) override;
    const char        *name() const override
    {
        return "IntAttentionLogitsKernel";
    }
    void set_scale(float scale)
    {
        _scale = scale;
    }

private:
    arm_compute::ITensor *_scores{ nullptr };
    float                 _scale{ 1.0f };
};
} // namespace intattention_acl

#endif // INTATTENTION_ACL_ROW_KERNELS_H
