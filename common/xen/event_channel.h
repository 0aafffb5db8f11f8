// EventChannel: one handle of interdomain event channels with a pollable fd.
//
// Implementations: LibxenEventChannel (libxenevtchn, /dev/xen/evtchn) and
// SimEventChannel (eventfd on the simulated host). Semantics are the Linux
// evtchn device's: a port that fires is reported once by pending() and stays
// masked until unmask(); an event arriving while masked is latched and
// reported after unmask. A handle is owned by one thread.
#pragma once

#include "common/result.h"
#include "common/xen/types.h"

namespace xenpath {

class EventChannel : public XenHandle {
 public:
  virtual ~EventChannel() = default;

  // Binds a local port to (remote, remote_port), the frontend's unbound port.
  virtual Result<EvtchnPort> bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept = 0;
  // Allocates a local port that `remote` may bind to (what a frontend does).
  virtual Result<EvtchnPort> bind_unbound(DomId remote) noexcept = 0;
  virtual Status unbind(EvtchnPort local) noexcept = 0;
  virtual Status notify(EvtchnPort local) noexcept = 0;

  // Readable when pending() has something. Non-blocking.
  [[nodiscard]] virtual int fd() const noexcept = 0;
  // Next port that fired, or EAGAIN when none is pending.
  virtual Result<EvtchnPort> pending() noexcept = 0;
  virtual Status unmask(EvtchnPort local) noexcept = 0;
};

}  // namespace xenpath
