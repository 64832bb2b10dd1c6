// shim.cpp: the C entry points of intattention_acl.h. Each one checks its pointers, runs its
// body inside guarded() so that no C++ exception reaches the caller, validates ACL functions
// before configuring them, and reports failures through a status plus a thread-local message.
//
// Exceptions on ACL's worker threads: every run goes through CatchingScheduler (below), which
// wraps each workload in a catch, so an exception never leaves a worker thread (where it would
// end the process) and is rethrown on the calling thread once every worker has finished; there
// guarded() turns it into IA_EXCEPTION.
#include "intattention_acl.h"

#include "compat.h"
#include "row_kernels.h"

#include "arm_compute/core/Error.h"
#include "arm_compute/core/TensorInfo.h"
#include "arm_compute/runtime/CPP/CPPScheduler.h"
#include "arm_compute/runtime/IFunction.h"
#include "arm_compute/runtime/NEON/NEScheduler.h"
#include "arm_compute/runtime/NEON/functions/NECast.h"
#include "arm_compute/runtime/NEON/functions/NEDequantizationLayer.h"
#include "arm_compute/runtime/NEON/functions/NEGEMM.h"
#include "arm_compute/runtime/NEON/functions/NEGEMMLowpMatrixMultiplyCore.h"
#include "arm_compute/runtime/NEON/functions/NEQuantizationLayer.h"
#include "arm_compute/runtime/NEON/functions/NESoftmaxLayer.h"
#include "arm_compute/runtime/NEON/functions/NETranspose.h"
#include "arm_compute/runtime/Scheduler.h"
#include "arm_compute/runtime/Tensor.h"
#if INTATTENTION_ACL_PATCHED
// Added to ACL by patches/0001-index-softmax.patch.
#include "arm_compute/runtime/NEON/functions/NEIndexSoftmaxLayer.h"
#endif

#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace arm_compute;
using namespace intattention_acl;

struct ia_tensor
{
    Tensor   tensor{};
    bool     allocated{ false };
    bool     imported{ false };
    uint64_t imported_bytes{ 0 };
    // Functions configured on this tensor; destroying it before them would leave them dangling.
    uint32_t users{ 0 };
};

struct ia_function
{
    std::string                     name{};
    std::vector<ia_tensor *>        tensors{};
    std::unique_ptr<IFunction>      function{};
    // The shim's kernels. For IndexSoftmax on a patched ACL it only validates and keeps the
    // threshold and row limits; the computation runs inside ACL (in_tree).
    std::unique_ptr<RowKernel>      kernel{};
#if INTATTENTION_ACL_PATCHED
    // IndexSoftmax inside ACL: every finish, table, threshold and row limit of the shim's
    // kernel, with the same bits.
    std::unique_ptr<NEIndexSoftmaxLayer> in_tree{};
    // U32 [rows]: each row's valid length (the columns when the row is whole).
    std::unique_ptr<Tensor>              in_tree_lengths{};
    int32_t                              in_tree_threshold{ 0 };
#endif

    ~ia_function()
    {
        for(ia_tensor *t : tensors)
        {
            --t->users;
        }
    }
};

namespace
{
thread_local std::string tl_last_error;

// Never throws: a failure to record the message must not turn into an escaping exception.
void set_error(const char *context, const std::string &msg) noexcept
{
    try
    {
        tl_last_error = std::string(context) + ": " + msg;
    }
    catch(...)
    {
        tl_last_error.clear();
    }
}

// A shim-level failure carrying its status; thrown inside guarded() only.
struct Failure
{
    ia_status   status;
    std::string message;
};

[[noreturn]] void fail(ia_status status, std::string message)
{
    throw Failure{ status, std::move(message) };
}

void install_scheduler();

template <typename F>
ia_status guarded(const char *context, F &&body) noexcept
{
    try
    {
        install_scheduler();
        body();
        return IA_OK;
    }
    catch(const Failure &f)
    {
        set_error(context, f.message);
        return f.status;
    }
    catch(const std::bad_alloc &e)
    {
        set_error(context, std::string("out of memory (") + e.what() + ")");
        return IA_OUT_OF_MEMORY;
    }
    catch(const std::exception &e)
    {
        set_error(context, std::string("ACL raised: ") + e.what());
        return IA_EXCEPTION;
    }
    catch(...)
    {
        set_error(context, "ACL raised an exception that is not a std::exception");
        return IA_EXCEPTION;
    }
}

template <typename T>
T *need(T *p, const char *what)
{
    if(p == nullptr)
    {
        fail(IA_INVALID_ARGUMENT, std::string(what) + " is null");
    }
    return p;
}

void check_status(const Status &st, const char *function)
{
    if(!bool(st))
    {
        fail(IA_VALIDATION_FAILED, std::string(function) + " rejected the configuration: " + st.error_description());
    }
}

void check_msg(const std::string &msg, const char *kernel)
{
    if(!msg.empty())
    {
        fail(IA_VALIDATION_FAILED, std::string(kernel) + ": " + msg);
    }
}

DataType to_acl(ia_dtype t)
{
    switch(t)
    {
        case IA_DTYPE_F32:
            return DataType::F32;
        case IA_DTYPE_F16:
            return DataType::F16;
        case IA_DTYPE_S32:
            return DataType::S32;
        case IA_DTYPE_U8:
            return DataType::U8;
        case IA_DTYPE_S8:
            return DataType::S8;
        case IA_DTYPE_QASYMM8:
            return DataType::QASYMM8;
        case IA_DTYPE_QASYMM8_SIGNED:
            return DataType::QASYMM8_SIGNED;
        case IA_DTYPE_U32:
            return DataType::U32;
        default:
            fail(IA_INVALID_ARGUMENT, "unknown dtype " + std::to_string(t));
    }
}

bool is_quantized(ia_dtype t)
{
    return t == IA_DTYPE_QASYMM8 || t == IA_DTYPE_QASYMM8_SIGNED;
}

// Row-major dims (outermost first) -> ACL's TensorShape (innermost first). Built here because
// bindgen cannot see TensorShape's variadic constructor.
TensorShape to_shape(const ia_tensor_desc &d)
{
    if(d.rank < 1 || d.rank > IA_MAX_RANK)
    {
        fail(IA_INVALID_ARGUMENT, "rank must be 1..=" + std::to_string(IA_MAX_RANK) + ", got " + std::to_string(d.rank));
    }
    TensorShape shape{};
    for(uint32_t i = 0; i < d.rank; ++i)
    {
        const uint64_t n = d.dims[d.rank - 1 - i];
        if(n == 0 || n > uint64_t(1) << 31)
        {
            fail(IA_INVALID_ARGUMENT, "dimension " + std::to_string(n) + " is outside 1..=2^31");
        }
        shape.set(i, static_cast<size_t>(n));
    }
    return shape;
}

uint64_t element_count(const ITensorInfo *info)
{
    return info->tensor_shape().total_size();
}

// The layout in row-major terms, from ACL's innermost-first strides.
ia_tensor_layout layout_of(const ia_tensor *t)
{
    const ITensorInfo *info = t->tensor.info();
    ia_tensor_layout   l{};
    const size_t       rank = std::max<size_t>(1, info->num_dimensions());
    l.element_size          = info->element_size();
    for(size_t i = 0; i < rank && i < IA_MAX_RANK; ++i)
    {
        l.strides[rank - 1 - i] = info->strides_in_bytes()[i];
    }
    l.offset_first_element = info->offset_first_element_in_bytes();
    l.total_size           = info->total_size();
    l.dense                = (!info->has_padding() && l.total_size == element_count(info) * l.element_size) ? 1 : 0;
    l.has_memory           = (t->allocated || t->imported) ? 1 : 0;
    l.imported             = t->imported ? 1 : 0;
    return l;
}

// Gives an owned tensor its memory on first use; checks that an imported buffer still covers
// what ACL's layout needs.
void ensure_memory(ia_tensor *t)
{
    if(t->imported)
    {
        if(t->tensor.info()->total_size() > t->imported_bytes)
        {
            fail(IA_BAD_STATE, "an imported buffer of " + std::to_string(t->imported_bytes) + " bytes is smaller than the " + std::to_string(t->tensor.info()->total_size()) + " bytes the configured functions need");
        }
        return;
    }
    if(!t->allocated)
    {
        t->tensor.allocator()->allocate();
        if(t->tensor.buffer() == nullptr)
        {
            fail(IA_OUT_OF_MEMORY, "ACL could not allocate " + std::to_string(t->tensor.info()->total_size()) + " bytes");
        }
        t->allocated = true;
    }
}

// Visits every contiguous row of a tensor: fn(row index in dense order, pointer to the row).
template <typename F>
void for_each_row(ia_tensor *t, F &&fn)
{
    const ITensorInfo *info = t->tensor.info();
    const TensorShape &s    = info->tensor_shape();
    const size_t       dims = std::max<size_t>(1, info->num_dimensions());
    size_t             rows = 1;
    for(size_t i = 1; i < dims; ++i)
    {
        rows *= s[i];
    }
    uint8_t *base = t->tensor.buffer() + info->offset_first_element_in_bytes();
    for(size_t r = 0; r < rows; ++r)
    {
        size_t rem = r, off = 0;
        for(size_t i = 1; i < dims; ++i)
        {
            off += (rem % s[i]) * info->strides_in_bytes()[i];
            rem /= s[i];
        }
        fn(r, base + off);
    }
}

void check_dense_bytes(ia_tensor *t, uint64_t bytes)
{
    const uint64_t need = element_count(t->tensor.info()) * t->tensor.info()->element_size();
    if(bytes != need)
    {
        fail(IA_INVALID_ARGUMENT, "the buffer has " + std::to_string(bytes) + " bytes, the tensor's elements take " + std::to_string(need));
    }
}

// Records that a new function uses these tensors; for tensors that already have memory, ACL
// must not have grown their padding while configuring (validate() normally refuses first,
// since such tensors are no longer resizable).
std::unique_ptr<ia_function> make_function(const char *name, std::vector<ia_tensor *> tensors)
{
    std::unique_ptr<ia_function> f(new ia_function());
    f->name = name;
    for(ia_tensor *t : tensors)
    {
        if(t != nullptr)
        {
            f->tensors.push_back(t);
            ++t->users;
        }
    }
    return f;
}

void check_memory_layouts(const ia_function &f, const std::vector<uint64_t> &sizes_before)
{
    for(size_t i = 0; i < f.tensors.size(); ++i)
    {
        const ia_tensor *t = f.tensors[i];
        if((t->allocated || t->imported) && t->tensor.info()->total_size() != sizes_before[i])
        {
            fail(IA_BAD_STATE, f.name + " needs padding on a tensor that already has memory: configure functions before giving tensors memory");
        }
    }
}

std::vector<uint64_t> sizes_of(const std::vector<ia_tensor *> &tensors)
{
    std::vector<uint64_t> s;
    for(ia_tensor *t : tensors)
    {
        if(t != nullptr)
        {
            s.push_back(t->tensor.info()->total_size());
        }
    }
    return s;
}

ITensorInfo *info(ia_tensor *t)
{
    return t == nullptr ? nullptr : t->tensor.info();
}

// The common tail of every create: configure (already validated), check layouts, hand out.
template <typename Configure>
void finish(const char *name, std::vector<ia_tensor *> tensors, ia_function **out, Configure &&configure)
{
    const std::vector<uint64_t>   before = sizes_of(tensors);
    std::unique_ptr<ia_function> f      = make_function(name, tensors);
    configure(*f);
    check_memory_layouts(*f, before);
    *out = f.release();
}

QuantizationInfo negated_offset(const ITensorInfo *t)
{
    const UniformQuantizationInfo q = t->quantization_info().uniform();
    return QuantizationInfo(q.scale, -q.offset);
}

// Negates a tensor's quantization offset for the duration of a configure() call and restores
// it afterwards, also when configure() throws.
class NegatedOffset
{
public:
    explicit NegatedOffset(ITensorInfo *t)
        : _t(t), _saved(t->quantization_info())
    {
        _t->set_quantization_info(negated_offset(t));
    }
    ~NegatedOffset()
    {
        _t->set_quantization_info(_saved);
    }
    NegatedOffset(const NegatedOffset &) = delete;
    NegatedOffset &operator=(const NegatedOffset &) = delete;

private:
    ITensorInfo     *_t;
    QuantizationInfo _saved;
};

// The first exception of a group of workloads, kept until every workload has finished.
class FirstException
{
public:
    template <typename F>
    void run(F &&f) noexcept
    {
        try
        {
            f();
        }
        catch(...)
        {
            std::lock_guard<std::mutex> lock(_m);
            if(!_first)
            {
                _first = std::current_exception();
            }
        }
    }
    void rethrow()
    {
        if(_first)
        {
            std::rethrow_exception(_first);
        }
    }

private:
    std::mutex         _m{};
    std::exception_ptr _first{};
};

// A kernel as the scheduler sees it, with every entry point run inside FirstException.
class CatchingKernel final : public ICPPKernel
{
public:
    CatchingKernel(ICPPKernel *kernel, FirstException &first)
        : _k(kernel), _first(first)
    {
        IKernel::configure(kernel->window());
    }
    bool is_parallelisable() const override
    {
        return _k->is_parallelisable();
    }
    BorderSize border_size() const override
    {
        return _k->border_size();
    }
    void run(const Window &window, const ThreadInfo &info) override
    {
        _first.run([&] { _k->run(window, info); });
    }
    void run_nd(const Window &window, const ThreadInfo &info, const Window &thread_locator) override
    {
        _first.run([&] { _k->run_nd(window, info, thread_locator); });
    }
    void run_op(ITensorPack &tensors, const Window &window, const ThreadInfo &info) override
    {
        _first.run([&] { _k->run_op(tensors, window, info); });
    }
#if INTATTENTION_ACL_MAJOR >= 52
    size_t get_mws(const CPUInfo &platform, size_t thread_count) const override
    {
        return _k->get_mws(platform, thread_count);
    }
#endif
    const char *name() const override
    {
        return _k->name();
    }

private:
    ICPPKernel     *_k;
    FirstException &_first;
};

// ACL's CPP scheduler with every kernel entry point and workload wrapped in a catch. A C++
// exception that leaves a thread ends the process; ACL's CPPScheduler catches what its workers
// throw, but 20.08 unwinds from the calling thread's own share of the work while the workers
// still run on workloads it destroys. Here nothing throws inside the scheduler: the first
// exception is kept, the inner CPPScheduler joins every worker, then it is rethrown on the
// calling thread. CPPScheduler is final, so this wraps one instead of deriving from it.
class CatchingScheduler final : public IScheduler
{
public:
    void set_num_threads(unsigned int num_threads) override
    {
        _inner.set_num_threads(num_threads);
    }
    void set_num_threads_with_affinity(unsigned int num_threads, BindFunc func) override
    {
        _inner.set_num_threads_with_affinity(num_threads, func);
    }
    unsigned int num_threads() const override
    {
        return _inner.num_threads();
    }
    void schedule(ICPPKernel *kernel, const Hints &hints) override
    {
        FirstException first;
        CatchingKernel k(kernel, first);
        _inner.schedule(&k, hints);
        first.rethrow();
    }
#if INTATTENTION_ACL_MAJOR >= 52
    void schedule_op(ICPPKernel *kernel, const Hints &hints, const Window &window, ITensorPack &tensors) override
    {
        FirstException first;
        CatchingKernel k(kernel, first);
        _inner.schedule_op(&k, hints, window, tensors);
        first.rethrow();
    }
#else
    void schedule_op(ICPPKernel *kernel, const Hints &hints, ITensorPack &tensors) override
    {
        FirstException first;
        CatchingKernel k(kernel, first);
        _inner.schedule_op(&k, hints, tensors);
        first.rethrow();
    }
#endif
    void run_tagged_workloads(std::vector<Workload> &workloads, const char *tag) override
    {
        FirstException        first;
        std::vector<Workload> wrapped;
        wrapped.reserve(workloads.size());
        for(Workload &w : workloads)
        {
            wrapped.emplace_back([&first, &w](const ThreadInfo &info) { first.run([&] { w(info); }); });
        }
        _inner.run_tagged_workloads(wrapped, tag);
        first.rethrow();
    }

protected:
    void run_workloads(std::vector<Workload> &workloads) override
    {
        run_tagged_workloads(workloads, nullptr);
    }

private:
    CPPScheduler _inner{};
};

// Makes CatchingScheduler the scheduler of every ACL function (NEScheduler::get()), once,
// before the first function is configured or run.
void install_scheduler()
{
    static std::once_flag once;
    std::call_once(once, [] { Scheduler::set(std::make_shared<CatchingScheduler>()); });
}

#if INTATTENTION_ACL_PATCHED
IndexSoftmaxInfo in_tree_info(const ia_index_softmax_params &p)
{
    IndexSoftmaxInfo info{};
    info.threshold  = p.threshold;
    info.finish     = p.variant == IA_INDEX_SOFTMAX_DEFERRED    ? IndexSoftmaxFinish::DEFERRED
                      : p.variant == IA_INDEX_SOFTMAX_PAPER_SIM ? IndexSoftmaxFinish::PAPER_SIM
                                                                : IndexSoftmaxFinish::NORMALIZED;
    info.table_size = p.table_len;
    std::memcpy(info.table, p.table, std::min<size_t>(p.table_len, sizeof(info.table)));
    return info;
}

// Writes the kernel's row limits (or whole rows) into the lengths tensor ACL reads.
void write_row_lengths(ia_function &f)
{
    auto           *k = static_cast<IndexSoftmaxKernel *>(f.kernel.get());
    Tensor         *t = f.in_tree_lengths.get();
    const ITensorInfo *info = t->info();
    for(size_t r = 0; r < k->rows(); ++r)
    {
        const uint32_t v = static_cast<uint32_t>(k->valid_len(r));
        std::memcpy(t->buffer() + info->offset_first_element_in_bytes() + r * info->strides_in_bytes()[0], &v, sizeof(v));
    }
}
#endif

// Runs IndexSoftmax inside ACL when ACL carries our patch; false when the shim's kernel runs.
bool run_in_tree(ia_function &f)
{
#if INTATTENTION_ACL_PATCHED
    if(!f.in_tree)
    {
        return false;
    }
    auto *k = static_cast<IndexSoftmaxKernel *>(f.kernel.get());
    if(f.in_tree_threshold != k->threshold())
    {
        f.in_tree->set_threshold(k->threshold());
        f.in_tree_threshold = k->threshold();
    }
    f.in_tree->run();
    return true;
#else
    (void)f;
    return false;
#endif
}

// ia_selftest_worker_exception's kernel: throws on any thread but the one that scheduled it.
class ThrowOnWorkerKernel final : public RowKernel
{
public:
    explicit ThrowOnWorkerKernel(size_t rows)
        : _caller(std::this_thread::get_id())
    {
        configure_rows(rows, 1);
    }
    void run(const Window &window, const ThreadInfo &info) override
    {
        (void)window;
        (void)info;
        if(std::this_thread::get_id() != _caller)
        {
            _ran_on_worker = true;
            throw std::runtime_error("self-test: thrown on an ACL worker thread");
        }
    }
    const char *name() const override
    {
        return "IntAttentionThrowOnWorkerKernel";
    }
    bool ran_on_worker() const
    {
        return _ran_on_worker;
    }

private:
    std::thread::id   _caller;
    std::atomic<bool> _ran_on_worker{ false };
};

// Functions that keep their kernel's rows limited need a RowKernel.
RowKernel *row_kernel(ia_function *f)
{
    if(!f->kernel)
    {
        fail(IA_INVALID_ARGUMENT, f->name + " takes no row limits");
    }
    return f->kernel.get();
}
} // namespace

extern "C" {

const char *ia_last_error(void)
{
    return tl_last_error.c_str();
}

ia_status ia_build_info_get(ia_build_info *out)
{
    return guarded("ia_build_info_get", [&] {
        need(out, "out");
        out->acl_major             = INTATTENTION_ACL_MAJOR;
        out->acl_patched           = INTATTENTION_ACL_PATCHED;
        // Every IndexSoftmax function runs inside ACL when it is patched.
        out->index_softmax_in_tree = INTATTENTION_ACL_PATCHED;
    });
}

ia_status ia_scheduler_set_threads(uint32_t threads)
{
    return guarded("ia_scheduler_set_threads", [&] { NEScheduler::get().set_num_threads(threads); });
}

ia_status ia_scheduler_threads(uint32_t *out)
{
    return guarded("ia_scheduler_threads", [&] { *need(out, "out") = NEScheduler::get().num_threads(); });
}

ia_status ia_selftest_worker_exception(uint32_t threads)
{
    return guarded("ia_selftest_worker_exception", [&] {
        if(threads < 2)
        {
            fail(IA_INVALID_ARGUMENT, "the self-test needs at least 2 threads");
        }
        NEScheduler::get().set_num_threads(threads);
        // Many rows: every thread, the workers included, gets its first window of them.
        ThrowOnWorkerKernel k(64 * size_t(threads));
        NEScheduler::get().schedule(&k, IScheduler::Hints(Window::DimY));
        fail(IA_BAD_STATE, k.ran_on_worker() ? "a worker's exception was lost" : "no workload ran on a worker thread");
    });
}

ia_status ia_tensor_create(const ia_tensor_desc *desc, ia_tensor **out)
{
    return guarded("ia_tensor_create", [&] {
        need(desc, "desc");
        need(out, "out");
        *out                    = nullptr;
        const TensorShape shape = to_shape(*desc);
        const DataType    dt    = to_acl(desc->dtype);
        std::unique_ptr<ia_tensor> t(new ia_tensor());
        if(is_quantized(desc->dtype))
        {
            if(!(desc->scale > 0.0f) || !std::isfinite(desc->scale))
            {
                fail(IA_INVALID_ARGUMENT, "a quantized tensor needs a finite scale > 0");
            }
            t->tensor.allocator()->init(TensorInfo(shape, 1, dt, QuantizationInfo(desc->scale, desc->offset)));
        }
        else
        {
            t->tensor.allocator()->init(TensorInfo(shape, 1, dt));
        }
        *out = t.release();
    });
}

ia_status ia_tensor_destroy(ia_tensor *tensor)
{
    return guarded("ia_tensor_destroy", [&] {
        if(tensor == nullptr)
        {
            return;
        }
        if(tensor->users != 0)
        {
            fail(IA_BAD_STATE, std::to_string(tensor->users) + " function(s) still use this tensor");
        }
        delete tensor;
    });
}

ia_status ia_tensor_allocate(ia_tensor *tensor)
{
    return guarded("ia_tensor_allocate", [&] { ensure_memory(need(tensor, "tensor")); });
}

ia_status ia_tensor_import(ia_tensor *tensor, void *memory, uint64_t bytes)
{
    return guarded("ia_tensor_import", [&] {
        need(tensor, "tensor");
        need(memory, "memory");
        if(tensor->allocated || tensor->imported)
        {
            fail(IA_BAD_STATE, "the tensor already has memory");
        }
        const ia_tensor_layout l = layout_of(tensor);
        if(!l.dense)
        {
            fail(IA_BAD_STATE, "functions configured on this tensor padded it: a borrowed buffer must be a plain row-major array");
        }
        if(bytes < l.total_size)
        {
            fail(IA_INVALID_ARGUMENT, "the buffer has " + std::to_string(bytes) + " bytes, the tensor needs " + std::to_string(l.total_size));
        }
        if(reinterpret_cast<uintptr_t>(memory) % l.element_size != 0)
        {
            fail(IA_INVALID_ARGUMENT, "the buffer is not aligned to its element size");
        }
        // import_memory does not check the size: the checks above and in ensure_memory do.
        check_status(tensor->tensor.allocator()->import_memory(memory), "TensorAllocator::import_memory");
        tensor->imported       = true;
        tensor->imported_bytes = bytes;
    });
}

ia_status ia_tensor_layout_get(const ia_tensor *tensor, ia_tensor_layout *out)
{
    return guarded("ia_tensor_layout_get", [&] { *need(out, "out") = layout_of(need(tensor, "tensor")); });
}

ia_status ia_tensor_write(ia_tensor *tensor, const void *src, uint64_t bytes)
{
    return guarded("ia_tensor_write", [&] {
        need(tensor, "tensor");
        need(src, "src");
        check_dense_bytes(tensor, bytes);
        ensure_memory(tensor);
        const size_t row_bytes = tensor->tensor.info()->tensor_shape()[0] * tensor->tensor.info()->element_size();
        const auto  *s         = static_cast<const uint8_t *>(src);
        for_each_row(tensor, [&](size_t r, uint8_t *dst) { std::memcpy(dst, s + r * row_bytes, row_bytes); });
    });
}

ia_status ia_tensor_read(ia_tensor *tensor, void *dst, uint64_t bytes)
{
    return guarded("ia_tensor_read", [&] {
        need(tensor, "tensor");
        need(dst, "dst");
        check_dense_bytes(tensor, bytes);
        ensure_memory(tensor);
        const size_t row_bytes = tensor->tensor.info()->tensor_shape()[0] * tensor->tensor.info()->element_size();
        auto        *d         = static_cast<uint8_t *>(dst);
        for_each_row(tensor, [&](size_t r, uint8_t *src) { std::memcpy(d + r * row_bytes, src, row_bytes); });
    });
}

ia_status ia_function_destroy(ia_function *function)
{
    return guarded("ia_function_destroy", [&] { delete function; });
}

ia_status ia_function_run(ia_function *function)
{
    return guarded("ia_function_run", [&] {
        need(function, "function");
        for(ia_tensor *t : function->tensors)
        {
            ensure_memory(t);
        }
        if(function->function)
        {
            function->function->run();
        }
        else if(!run_in_tree(*function))
        {
            NEScheduler::get().schedule(function->kernel.get(), IScheduler::Hints(Window::DimY));
        }
    });
}

ia_status ia_gemm_create(ia_tensor *a, ia_tensor *b, ia_tensor *d, float alpha, const ia_gemm_options *options,
                         ia_function **out)
{
    return guarded("ia_gemm_create", [&] {
        need(a, "a");
        need(b, "b");
        need(d, "d");
        need(options, "options");
        need(out, "out");
        *out                  = nullptr;
        const bool     b_const = options->b_constant != 0;
        const GEMMInfo gi      = gemm_info(b_const);
        check_status(NEGEMM::validate(info(a), info(b), nullptr, info(d), alpha, 0.0f, gi), "NEGEMM");
        finish("NEGEMM", { a, b, d }, out, [&](ia_function &f) {
            mark_b_values(&b->tensor, b_const);
            std::unique_ptr<NEGEMM> fn(new NEGEMM());
            fn->configure(&a->tensor, &b->tensor, nullptr, &d->tensor, alpha, 0.0f, gi);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_gemmlowp_create(ia_tensor *a, ia_tensor *b, ia_tensor *d, const ia_gemm_options *options,
                             ia_function **out)
{
    return guarded("ia_gemmlowp_create", [&] {
        need(a, "a");
        need(b, "b");
        need(d, "d");
        need(options, "options");
        need(out, "out");
        *out                  = nullptr;
        const bool     b_const = options->b_constant != 0;
        const GEMMInfo gi      = gemm_info(b_const);
        const DataType ta = info(a)->data_type(), tb = info(b)->data_type();
        const auto     qasymm = [](DataType t) { return t == DataType::QASYMM8 || t == DataType::QASYMM8_SIGNED; };
        if(qasymm(ta) && qasymm(tb) && (ta == DataType::QASYMM8_SIGNED) != (tb == DataType::QASYMM8_SIGNED))
        {
            // ACL validates this pair but computes garbage (all wrong on 20.08 under qemu, all
            // zeros on 52.3): refuse it rather than return wrong numbers.
            fail(IA_VALIDATION_FAILED, "NEGEMMLowpMatrixMultiplyCore gives wrong results for a and b of different signedness; "
                                       "shift the signed operand by 128 into QASYMM8 with offset 128 instead");
        }
        // ACL's GEMMLowp core adds the offsets in the tensors' QuantizationInfo, while this
        // header means real = scale * (q - offset): validate and configure with negated
        // offsets, as ACL's own quantized layers do.
        TensorInfo va(*info(a)), vb(*info(b));
        va.set_quantization_info(negated_offset(info(a)));
        vb.set_quantization_info(negated_offset(info(b)));
        check_status(NEGEMMLowpMatrixMultiplyCore::validate(&va, &vb, nullptr, info(d), gi),
                     "NEGEMMLowpMatrixMultiplyCore");
        finish("NEGEMMLowpMatrixMultiplyCore", { a, b, d }, out, [&](ia_function &f) {
            mark_b_values(&b->tensor, b_const);
            NegatedOffset na(info(a)), nb(info(b));
            std::unique_ptr<NEGEMMLowpMatrixMultiplyCore> fn(new NEGEMMLowpMatrixMultiplyCore());
            fn->configure(&a->tensor, &b->tensor, nullptr, &d->tensor, gi);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_softmax_create(ia_tensor *input, ia_tensor *output, float beta, ia_function **out)
{
    return guarded("ia_softmax_create", [&] {
        need(input, "input");
        need(output, "output");
        need(out, "out");
        *out = nullptr;
        if(!std::isfinite(beta))
        {
            fail(IA_INVALID_ARGUMENT, "beta must be finite");
        }
        // axis 0 is the contiguous dimension in both families (other values changed meaning).
        check_status(NESoftmaxLayer::validate(info(input), info(output), beta, 0), "NESoftmaxLayer");
        finish("NESoftmaxLayer", { input, output }, out, [&](ia_function &f) {
            std::unique_ptr<NESoftmaxLayer> fn(new NESoftmaxLayer());
            fn->configure(&input->tensor, &output->tensor, beta, 0);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_cast_create(ia_tensor *input, ia_tensor *output, ia_function **out)
{
    return guarded("ia_cast_create", [&] {
        need(input, "input");
        need(output, "output");
        need(out, "out");
        *out = nullptr;
        check_status(NECast::validate(info(input), info(output), ConvertPolicy::SATURATE), "NECast");
        finish("NECast", { input, output }, out, [&](ia_function &f) {
            std::unique_ptr<NECast> fn(new NECast());
            fn->configure(&input->tensor, &output->tensor, ConvertPolicy::SATURATE);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_quantize_create(ia_tensor *input, ia_tensor *output, ia_function **out)
{
    return guarded("ia_quantize_create", [&] {
        need(input, "input");
        need(output, "output");
        need(out, "out");
        *out = nullptr;
        check_status(NEQuantizationLayer::validate(info(input), info(output)), "NEQuantizationLayer");
        finish("NEQuantizationLayer", { input, output }, out, [&](ia_function &f) {
            std::unique_ptr<NEQuantizationLayer> fn(new NEQuantizationLayer());
            fn->configure(&input->tensor, &output->tensor);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_dequantize_create(ia_tensor *input, ia_tensor *output, ia_function **out)
{
    return guarded("ia_dequantize_create", [&] {
        need(input, "input");
        need(output, "output");
        need(out, "out");
        *out = nullptr;
        check_status(NEDequantizationLayer::validate(info(input), info(output)), "NEDequantizationLayer");
        finish("NEDequantizationLayer", { input, output }, out, [&](ia_function &f) {
            std::unique_ptr<NEDequantizationLayer> fn(new NEDequantizationLayer());
            fn->configure(&input->tensor, &output->tensor);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_transpose_create(ia_tensor *input, ia_tensor *output, ia_function **out)
{
    return guarded("ia_transpose_create", [&] {
        need(input, "input");
        need(output, "output");
        need(out, "out");
        *out = nullptr;
        check_status(NETranspose::validate(info(input), info(output)), "NETranspose");
        finish("NETranspose", { input, output }, out, [&](ia_function &f) {
            std::unique_ptr<NETranspose> fn(new NETranspose());
            fn->configure(&input->tensor, &output->tensor);
            f.function = std::move(fn);
        });
    });
}

ia_status ia_index_softmax_create(ia_tensor *scores, ia_tensor *probs, ia_tensor *row_sums,
                                  const ia_index_softmax_params *params, ia_function **out)
{
    return guarded("ia_index_softmax_create", [&] {
        need(scores, "scores");
        need(probs, "probs");
        need(params, "params");
        need(out, "out");
        *out = nullptr;
        check_msg(IndexSoftmaxKernel::validate(info(scores), info(probs), info(row_sums), *params), "IndexSoftmax");
        finish("IndexSoftmax", { scores, probs, row_sums }, out, [&](ia_function &f) {
            std::unique_ptr<IndexSoftmaxKernel> k(new IndexSoftmaxKernel());
            k->configure(&scores->tensor, &probs->tensor, row_sums ? &row_sums->tensor : nullptr, *params);
            f.kernel = std::move(k);
#if INTATTENTION_ACL_PATCHED
            const IndexSoftmaxInfo  in_info = in_tree_info(*params);
            std::unique_ptr<Tensor> lengths(new Tensor());
            lengths->allocator()->init(TensorInfo(TensorShape(info(scores)->tensor_shape()[1]), 1, DataType::U32));
            check_status(NEIndexSoftmaxLayer::validate(info(scores), info(probs), info(row_sums), lengths->info(), in_info),
                         "NEIndexSoftmaxLayer");
            lengths->allocator()->allocate();
            std::unique_ptr<NEIndexSoftmaxLayer> fn(new NEIndexSoftmaxLayer());
            fn->configure(&scores->tensor, &probs->tensor, row_sums ? &row_sums->tensor : nullptr, lengths.get(), in_info);
            f.in_tree           = std::move(fn);
            f.in_tree_lengths   = std::move(lengths);
            f.in_tree_threshold = params->threshold;
            write_row_lengths(f);
#endif
        });
    });
}

ia_status ia_index_softmax_set_threshold(ia_function *function, int32_t threshold)
{
    return guarded("ia_index_softmax_set_threshold", [&] {
        need(function, "function");
        auto *k = dynamic_cast<IndexSoftmaxKernel *>(function->kernel.get());
        if(k == nullptr)
        {
            fail(IA_INVALID_ARGUMENT, function->name + " is not IndexSoftmax");
        }
        check_msg(k->set_threshold(threshold), "IndexSoftmax");
    });
}

ia_status ia_logits_create(ia_tensor *scores, ia_function **out)
{
    return guarded("ia_logits_create", [&] {
        need(scores, "scores");
        need(out, "out");
        *out = nullptr;
        check_msg(LogitsKernel::validate(info(scores)), "Logits");
        finish("Logits", { scores }, out, [&](ia_function &f) {
            std::unique_ptr<LogitsKernel> k(new LogitsKernel());
            k->configure(&scores->tensor);
            f.kernel = std::move(k);
        });
    });
}

ia_status ia_logits_set_scale(ia_function *function, float scale)
{
    return guarded("ia_logits_set_scale", [&] {
        need(function, "function");
        auto *k = dynamic_cast<LogitsKernel *>(function->kernel.get());
        if(k == nullptr)
        {
            fail(IA_INVALID_ARGUMENT, function->name + " is not Logits");
        }
        if(!std::isfinite(scale))
        {
            fail(IA_INVALID_ARGUMENT, "the logit scale must be finite");
        }
        k->set_scale(scale);
    });
}

ia_status ia_function_set_row_limits(ia_function *function, const uint32_t *valid, uint64_t rows)
{
    return guarded("ia_function_set_row_limits", [&] {
        need(function, "function");
        RowKernel *k = row_kernel(function);
        if(valid == nullptr)
        {
            if(rows != 0)
            {
                fail(IA_INVALID_ARGUMENT, "valid is null but rows is not 0");
            }
            k->set_row_limits({});
#if INTATTENTION_ACL_PATCHED
            if(function->in_tree_lengths)
            {
                write_row_lengths(*function);
            }
#endif
            return;
        }
        if(rows != k->rows())
        {
            fail(IA_INVALID_ARGUMENT, "got " + std::to_string(rows) + " row limits for " + std::to_string(k->rows()) + " rows");
        }
        std::vector<uint32_t> limits(valid, valid + rows);
        for(uint32_t v : limits)
        {
            if(v > k->cols())
            {
                fail(IA_INVALID_ARGUMENT, "row limit " + std::to_string(v) + " exceeds " + std::to_string(k->cols()) + " columns");
            }
        }
        k->set_row_limits(std::move(limits));
#if INTATTENTION_ACL_PATCHED
        if(function->in_tree_lengths)
        {
            write_row_lengths(*function);
        }
#endif
    });
}

} // extern "C"
