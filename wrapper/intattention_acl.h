/*
 * intattention_acl.h: the plain-C surface of the ARM ComputeLibrary (ACL) shim.
 *
 * This header is all that Rust (bindgen) sees of ACL. It holds only fixed-width integer types,
 * POD structs and opaque handles, so its bindings are identical on every host and target.
 *
 * Conventions:
 * - Every entry point returns an ia_status. On failure, ia_last_error() returns a message for
 *   the calling thread (valid until that thread's next shim call). No C++ exception crosses
 *   this boundary.
 * - ACL functions are validated (ACL's static validate()) before configure(), because release
 *   builds of ACL skip validation inside configure().
 * - Shapes are row-major here: dims[0] is the outermost dimension, dims[rank - 1] the
 *   contiguous one. The shim converts to ACL's TensorShape (innermost first).
 * - Lifetimes the caller must respect: a function refers to its tensors, so destroy every
 *   function before the tensors it uses; an imported buffer must outlive the tensor.
 * - Running functions goes through ACL's process-wide scheduler: callers serialise
 *   ia_function_run and ia_scheduler_set_threads across threads.
 */
#ifndef INTATTENTION_ACL_H
#define INTATTENTION_ACL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status of every call. */
typedef int32_t ia_status;
#define IA_OK 0
/* A null pointer, an unknown enum value, or a shape the shim itself rejects. */
#define IA_INVALID_ARGUMENT 1
/* ACL's validate() rejected the configuration; the message is ACL's. */
#define IA_VALIDATION_FAILED 2
/* A C++ exception (std::exception or other) was caught inside ACL or the shim. */
#define IA_EXCEPTION 3
/* std::bad_alloc was caught. */
#define IA_OUT_OF_MEMORY 4
/* A call out of order: no memory behind a tensor, an imported buffer too small, ... */
#define IA_BAD_STATE 5

/* Element types, mapped onto ACL DataType values. Quantized types carry scale and offset:
 * real = scale * (q - offset). */
typedef int32_t ia_dtype;
#define IA_DTYPE_F32 0
#define IA_DTYPE_F16 1
#define IA_DTYPE_S32 2
#define IA_DTYPE_U8 3
#define IA_DTYPE_S8 4
#define IA_DTYPE_QASYMM8 5
#define IA_DTYPE_QASYMM8_SIGNED 6
#define IA_DTYPE_U32 7

#define IA_MAX_RANK 4

/* A tensor's element type, shape and quantization. */
typedef struct ia_tensor_desc {
    ia_dtype dtype;
    uint32_t rank;                /* 1..=IA_MAX_RANK */
    uint64_t dims[IA_MAX_RANK];   /* row-major; entries past rank are ignored */
    float scale;                  /* quantized types only; 0 otherwise */
    int32_t offset;               /* quantized types only; 0 otherwise */
} ia_tensor_desc;

/* Where a tensor's elements lie once ACL has settled its padding. */
typedef struct ia_tensor_layout {
    uint64_t element_size;                  /* bytes */
    uint64_t strides[IA_MAX_RANK];          /* bytes, row-major order like ia_tensor_desc.dims */
    uint64_t offset_first_element;          /* bytes from the start of the buffer */
    uint64_t total_size;                    /* bytes the buffer must hold */
    uint8_t dense;                          /* 1 when no padding: a plain row-major array */
    uint8_t has_memory;                     /* allocated or imported */
    uint8_t imported;                       /* memory borrowed through ia_tensor_import */
} ia_tensor_layout;

typedef struct ia_tensor ia_tensor;
typedef struct ia_function ia_function;

/* IndexSoftmax finish (docs/numerics.md, section 3). */
typedef int32_t ia_index_softmax_variant;
#define IA_INDEX_SOFTMAX_NORMALIZED 0
#define IA_INDEX_SOFTMAX_DEFERRED 1
#define IA_INDEX_SOFTMAX_PAPER_SIM 2

typedef struct ia_index_softmax_params {
    int32_t threshold;          /* T in [1, 2^30] */
    uint32_t table_len;         /* N = 2^b, b in 4..=8 */
    uint8_t table[256];         /* LUT[0..N] */
    ia_index_softmax_variant variant;
} ia_index_softmax_params;

typedef struct ia_gemm_options {
    /* 1: B holds the same values on every run, so ACL may pack it once (its default).
     * 0: B changes between runs and is re-read on every run. */
    uint8_t b_constant;
} ia_gemm_options;

typedef struct ia_build_info {
    uint32_t acl_major;             /* 20 or 52: the ACL family the shim was compiled for */
    uint8_t acl_patched;            /* 1 when the ACL in use carries our IndexSoftmax patch */
    /* 1 when every IndexSoftmax function runs inside ACL (NEIndexSoftmaxLayer, from our patch):
     * every variant, table, threshold, row limit and the row sums. 0: the shim's out-of-tree
     * kernel runs (an unpatched ACL). Both give the same bits. */
    uint8_t index_softmax_in_tree;
} ia_build_info;

/* The calling thread's message for its last failed call ("" if none). */
const char *ia_last_error(void);
ia_status ia_build_info_get(ia_build_info *out);

/* Scheduler (process-wide). 0 threads means ACL's default (one per core). An exception that an
 * ACL kernel raises on a worker thread is caught there and reported by the call that ran it
 * (IA_EXCEPTION), after every worker has finished. */
ia_status ia_scheduler_set_threads(uint32_t threads);
ia_status ia_scheduler_threads(uint32_t *out);
/* Self-test of the above: sets the scheduler to `threads` (>= 2) threads and runs a kernel that
 * throws on every worker thread (never on the calling one). Returns IA_EXCEPTION with the
 * kernel's message when the exception came back as an error; IA_BAD_STATE if no workload ran on
 * a worker. The scheduler keeps `threads` threads afterwards. */
ia_status ia_selftest_worker_exception(uint32_t threads);

/* Tensors. A new tensor has no memory; ACL functions configured on it may still add padding.
 * Memory comes from ia_tensor_allocate (owned; also done by ia_function_run, write and read)
 * or ia_tensor_import (borrowed, dense layout only, fixed from then on). */
ia_status ia_tensor_create(const ia_tensor_desc *desc, ia_tensor **out);
ia_status ia_tensor_destroy(ia_tensor *tensor);
ia_status ia_tensor_allocate(ia_tensor *tensor);
ia_status ia_tensor_import(ia_tensor *tensor, void *memory, uint64_t bytes);
ia_status ia_tensor_layout_get(const ia_tensor *tensor, ia_tensor_layout *out);
/* Copies a dense row-major array of exactly the tensor's element count in or out. */
ia_status ia_tensor_write(ia_tensor *tensor, const void *src, uint64_t bytes);
ia_status ia_tensor_read(ia_tensor *tensor, void *dst, uint64_t bytes);

/* Functions. Each create validates, then configures. */
ia_status ia_function_destroy(ia_function *function);
ia_status ia_function_run(ia_function *function);

/* d = alpha * a x b; a [M x K], b [K x N], d [M x N]; F32 or F16 (NEGEMM). */
ia_status ia_gemm_create(ia_tensor *a, ia_tensor *b, ia_tensor *d, float alpha,
                         const ia_gemm_options *options, ia_function **out);
/* d = (a - a.offset) x (b - b.offset) in S32 (NEGEMMLowpMatrixMultiplyCore, no output stage);
 * a, b QASYMM8 or QASYMM8_SIGNED. */
ia_status ia_gemmlowp_create(ia_tensor *a, ia_tensor *b, ia_tensor *d,
                             const ia_gemm_options *options, ia_function **out);
/* Row softmax over the contiguous dimension (NESoftmaxLayer, axis 0), F32. */
ia_status ia_softmax_create(ia_tensor *input, ia_tensor *output, float beta, ia_function **out);
/* Type conversion with saturation (NECast). */
ia_status ia_cast_create(ia_tensor *input, ia_tensor *output, ia_function **out);
/* F32 -> QASYMM8 / QASYMM8_SIGNED with the output's scale and offset (NEQuantizationLayer). */
ia_status ia_quantize_create(ia_tensor *input, ia_tensor *output, ia_function **out);
/* QASYMM8 / QASYMM8_SIGNED -> F32 (NEDequantizationLayer). */
ia_status ia_dequantize_create(ia_tensor *input, ia_tensor *output, ia_function **out);
/* 2-D transpose (NETranspose). */
ia_status ia_transpose_create(ia_tensor *input, ia_tensor *output, ia_function **out);
/* IndexSoftmax (docs/numerics.md, section 3) over the rows of a 2-D S32 tensor into U8 /
 * QASYMM8 of the same shape. row_sums (nullable) is S32 or U32 of shape [rows] and receives
 * sum_j e[j]. */
ia_status ia_index_softmax_create(ia_tensor *scores, ia_tensor *probs, ia_tensor *row_sums,
                                  const ia_index_softmax_params *params, ia_function **out);
/* Changes the threshold T of an IndexSoftmax function between runs (T follows the
 * quantization scales of each call). */
ia_status ia_index_softmax_set_threshold(ia_function *function, int32_t threshold);
/* Logits, in place on a 2-D F32 tensor: every entry is multiplied by a scale (1 until set;
 * it follows the quantization scales of each call, which ACL functions fix at configure
 * time), entries at or past a row's valid length become -infinity, and a row with no valid
 * entry becomes all zeros (so that a softmax over it stays finite). */
ia_status ia_logits_create(ia_tensor *scores, ia_function **out);
ia_status ia_logits_set_scale(ia_function *function, float scale);
/* Per-row valid lengths for IndexSoftmax and logits (rows entries, each <= cols).
 * NULL with rows 0 means every row is whole. */
ia_status ia_function_set_row_limits(ia_function *function, const uint32_t *valid,
                                     uint64_t rows);

#ifdef __cplusplus
}
#endif

#endif /* INTATTENTION_ACL_H */
