// Includes <xen/io/ring.h> with the barriers it expects. The public headers
// leave xen_mb/xen_rmb/xen_wmb to the includer (xenctrl.h would bring its
// own, but nothing outside common/libxen may include libxen headers).
// x86 and arm64 both need a full fence only for xen_mb; rmb/wmb are ordering
// constraints the acquire/release fences give.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#ifndef __XEN_INTERFACE_VERSION__
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#endif

#ifndef xen_mb
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#endif
#ifndef xen_rmb
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#endif
#ifndef xen_wmb
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif

#include <xen/grant_table.h>
#include <xen/io/ring.h>
