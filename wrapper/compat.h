// compat.h: everything that differs between the ACL families the shim supports (20.08 as
// shipped by Debian, and the SemVer releases from 52.0 on). The rest of the shim is written
// against the API the two share; each difference is bridged here, in one place.
//
// INTATTENTION_ACL_MAJOR comes from build/shim.rs (20 or 52). Without it, the presence of
// the 52.x-only header arm_compute/function_info/GEMMInfo.h decides (no public header of either
// family carries a numeric version).
#ifndef INTATTENTION_ACL_COMPAT_H
#define INTATTENTION_ACL_COMPAT_H

#ifndef INTATTENTION_ACL_MAJOR
#if __has_include("arm_compute/function_info/GEMMInfo.h")
#define INTATTENTION_ACL_MAJOR 52
#else
#define INTATTENTION_ACL_MAJOR 20
#endif
#endif

#ifndef INTATTENTION_ACL_PATCHED
#define INTATTENTION_ACL_PATCHED 0
#endif

#if INTATTENTION_ACL_MAJOR != 20 && INTATTENTION_ACL_MAJOR != 52
#error "INTATTENTION_ACL_MAJOR must be 20 or 52"
#endif

#include "arm_compute/core/Types.h"
#include "arm_compute/runtime/Tensor.h"
#if INTATTENTION_ACL_MAJOR >= 52
// 52.x moved GEMMInfo out of core/Types.h.
#include "arm_compute/function_info/GEMMInfo.h"
#endif

namespace intattention_acl
{
// GEMMInfo: only the 3-argument constructor means the same in both families (the meaning of
// the long constructor's 9th argument changed). reshape_b_only_on_first_run = false keeps ACL
// from packing B once and silently reusing it when B's values change (attention's K and V
// change on every call). On 20.08 this constructor also turns off its `pretranpose_B` packing
// hint; on 52.x `pretranspose_B` defaults to false (where true would mean a real transpose).
inline arm_compute::GEMMInfo gemm_info(bool b_constant)
{
    return arm_compute::GEMMInfo(false, false, b_constant);
}

// 52.x decides whether B may be packed once from the tensor's "values are constant" flag as
// well; 20.08 has no such flag.
inline void mark_b_values(arm_compute::ITensor *b, bool constant)
{
#if INTATTENTION_ACL_MAJOR >= 52
    b->info()->set_are_values_constant(constant);
#else
    (void)b;
    (void)constant;
#endif
}
} // namespace intattention_acl

// Other differences, handled without a define:
// - NECast::validate takes `ITensorInfo *` on 20.08 and `const ITensorInfo *` on 52.x: the shim
//   always passes the non-const pointer ITensor::info() returns, which both accept.
// - INEKernel.h is not installed on 52.x: the out-of-tree kernels derive from ICPPKernel,
//   which both have, and run through IScheduler::schedule(ICPPKernel *, const Hints &), which
//   both have (schedule_op, whose signature differs, is not used).
// - calculate_max_window is internal on 52.x and get_mws exists only there: the kernels build
//   their window by hand and keep the default minimum workload size.
// - libarm_compute_core exists only in 20.x: linking is build.rs's business.

#endif // INTATTENTION_ACL_COMPAT_H
