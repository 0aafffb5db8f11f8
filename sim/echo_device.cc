#include "sim/echo_device.h"
#include "common/xenbus/keys.h"

#include <poll.h>
#include <sys/epoll.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "common/guest_channel.h"
#include "common/ring.h"

namespace xenpath::sim {

namespace {

// Requests handled per poll() of one queue: a burst small enough that one
// busy guest cannot starve the other queues of its worker.
constexpr unsigned kBurst = 32;

// Guest-written text for a log line: bounded, printable ASCII only (no
// escape sequences or fake log lines from a hostile guest).
std::string printable(std::string_view s) {
  std::string out;
  const size_t n = std::min<size_t>(s.size(), 16);
  out.reserve(n + 3);
  for (size_t i = 0; i < n; ++i) out.push_back(s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?');
  if (s.size() > n) out += "...";
  return out;
}

}  // namespace

// One connected echo ring on a worker reactor. Created, polled and destroyed
// on the worker's thread (through Reactor::call from the control thread).
// Touches the mapped ring page, which the guest may rewrite at any moment:
// BackRing copies requests out before they are looked at, and the ring
// indexes are bounded by BackRing (overflow halts the queue).
class EchoQueue final : public XenRingPoller {
 public:
  struct Config {
    DomId frontend = 0;
    GrantRef ring_ref = 0;
    EvtchnPort remote_port = 0;
  };

  // On the worker's thread: maps the ring, binds the channel, polls.
  static Result<std::unique_ptr<EchoQueue>> start(EchoWorker& w, const Config& config, RingQueueStats& stats,
                                                  std::string log_prefix, const DeviceAddress& addr,
                                                  const EchoErrorSink& sink) noexcept {
    return start_with<EchoQueue>([&] { return new EchoQueue(w, config, stats, std::move(log_prefix), addr, sink); });
  }
  ~EchoQueue() override { teardown(); }

  void on_event(EvtchnPort) noexcept override {
    stats_.events_received.add();
    evtchn_.reported();  // the evtchn device keeps it masked until we unmask
  }

  bool poll() noexcept override {
    if (halted_ || !mapping_) return false;
    std::array<echo_request, kBurst> reqs;
    auto n = ring_.consume(reqs);
    if (!n) {
      halted_ = true;  // BackRing counted it in stats_.halted
      log_.guest("frontend overran the ring ({}); queue halted", error_string(n.error()));
      // The device is unusable: have the driver close it (error node,
      // disconnect), which releases the mapping from the control thread.
      if (sink_) sink_(addr_, n.error());
      return false;
    }
    if (*n == 0) return false;
    // BackRing counts requests, batches, responses and notifications.
    for (unsigned i = 0; i < *n; ++i) {
      const echo_request& rq = reqs[i];  // a private copy
      echo_response rs{};
      rs.id = rq.id;
      if (rq.value == kEchoReservedValue) {
        rs.value = 0;
        rs.status = kEchoStatusError;
        stats_.error_responses.add();
      } else {
        rs.value = rq.value + 1;
        rs.status = kEchoStatusOk;
      }
      // Each consumed request frees the slot its response takes.
      (void)ring_.push_response(rs);
    }
    // One push per burst; notify only when the frontend asked for it
    // (rsp_event), which is what keeps interrupts per request low.
    if (ring_.flush()) evtchn_.notify();
    return true;
  }

  bool arm() noexcept override {
    if (halted_ || !mapping_) return false;
    // Unmask before the final check: an event after the check then wakes
    // epoll; one before it is seen by the check.
    evtchn_.unmask_reported();
    return ring_.final_check();
  }

 private:
  EchoQueue(EchoWorker& w, const Config& config, RingQueueStats& stats, std::string log_prefix,
            const DeviceAddress& addr, const EchoErrorSink& sink) noexcept
      : XenRingPoller(w), config_(config), stats_(stats), log_(std::move(log_prefix)), addr_(addr), sink_(sink) {}

  Status init() noexcept override {
    XP_TRY(map_guest_ring(worker_, config_.frontend, {&config_.ring_ref, 1}, mapping_, ring_, &stats_, log_, "shared"));
    if (auto st = evtchn_.bind(worker_, config_.frontend, config_.remote_port, this); !st) {
      log_.guest("cannot bind event-channel {}: {}", config_.remote_port, error_string(st.error()));
      return st;
    }
    start_polling();
    // Requests the frontend queued before we bound are picked up by the
    // first poll(); its notification may have gone nowhere.
    return ok();
  }

  // Idempotent: after it, nothing of the guest stays mapped or bound.
  void teardown() noexcept override {
    stop_polling();
    evtchn_.unbind();
    mapping_.reset();
  }

  Config config_;
  RingQueueStats& stats_;
  DeviceLog log_;
  const DeviceAddress& addr_;  // the owning EchoDevice's, outlives us
  const EchoErrorSink& sink_;
  GrantMapping mapping_;
  BackRing<EchoRing> ring_;
  GuestEvtchn evtchn_;
  bool halted_ = false;
};

// ---------------------------------------------------------------- EchoDevice

EchoDevice::EchoDevice(const DeviceAddress& addr, EchoWorker& worker, EchoErrorSink sink) noexcept
    : addr_(addr),
      worker_(worker),
      sink_(std::move(sink)),
      log_(fmt::format("{} {}/{}: ", addr.type, addr.frontend_id, addr.devid)) {}

EchoDevice::~EchoDevice() { disconnect(); }

Status EchoDevice::write_backend_features(XenStore& xs, XsTxn t) noexcept {
  return xs.write(t, addr_.backend_path + "/echo-version", kEchoVersion);
}

Status EchoDevice::read_frontend(XenStore& xs, XsTxn t) noexcept {
  XP_ASSIGN_OR_RETURN(std::string ref, xs.read(t, addr_.frontend_path + "/ring-ref"));
  XP_ASSIGN_OR_RETURN(std::string port, xs.read(t, addr_.frontend_path + "/event-channel"));
  auto r = parse_decimal<uint32_t>(ref);
  auto p = parse_decimal<uint32_t>(port);
  if (!r || !p) {
    log_.guest("bad ring-ref '{}' or event-channel '{}'", printable(ref), printable(port));
    return unexpected(EINVAL);
  }
  ring_ref_ = *r;
  remote_port_ = *p;
  return ok();
}

Status EchoDevice::connect() noexcept {
  if (queue_) return unexpected(EALREADY);
  const EchoQueue::Config config{addr_.frontend_id, ring_ref_, remote_port_};
  // On failure the queue released what it took before it went, there.
  const Status st = start_on_worker(
      worker_, queue_, [&] { return EchoQueue::start(worker_, config, stats_, log_.prefix(), addr_, sink_); });
  if (st) connected_.store(true, std::memory_order_release);
  return st;
}

void EchoDevice::disconnect() noexcept {
  if (!queue_) return;
  // Returns once the worker dropped the poller, the port and the mapping:
  // the frontend may revoke its grant as soon as it sees us Closed.
  worker_.reactor().call([&] { queue_.reset(); });
  connected_.store(false, std::memory_order_release);
}

// ---------------------------------------------------------------- EchoDeviceType

Result<std::unique_ptr<BackendDevice>> EchoDeviceType::create(const DeviceAddress& addr, XenStore&, XsTxn) noexcept {
  if (workers_.empty()) return unexpected(ENODEV);
  EchoWorker* w = workers_[next_++ % workers_.size()];
  return std::unique_ptr<BackendDevice>(new EchoDevice(addr, *w, sink_));
}

// ---------------------------------------------------------------- SimEchoFrontend

Result<std::unique_ptr<SimEchoFrontend>> SimEchoFrontend::attach(SimDomain& dom, EventChannel& evtchn, XenStore& xs,
                                                                 std::string frontend_path,
                                                                 std::chrono::milliseconds timeout) noexcept {
  XP_ASSIGN_OR_RETURN(auto xb, SimXenbusFrontend::attach(xs, std::move(frontend_path), timeout));
  return std::unique_ptr<SimEchoFrontend>(new SimEchoFrontend(dom, evtchn, std::move(xb), timeout));
}

SimEchoFrontend::SimEchoFrontend(SimDomain& dom, EventChannel& evtchn, std::unique_ptr<SimXenbusFrontend> xb,
                                 std::chrono::milliseconds timeout) noexcept
    : dom_(dom), evtchn_(evtchn), xenbus_(std::move(xb)), timeout_(timeout) {}

SimEchoFrontend::~SimEchoFrontend() { (void)release(); }

Status SimEchoFrontend::connect() noexcept {
  XP_TRY(begin_connect());
  return finish_connect();
}

Status SimEchoFrontend::begin_connect() noexcept {
  if (granted_ || bound_) return unexpected(EALREADY);
  if (!have_page_) {
    XP_ASSIGN_OR_RETURN(pfn_, dom_.alloc_pages(1));
    have_page_ = true;
  }
  XP_ASSIGN_OR_RETURN(ref_, dom_.grant_access(xenbus_->backend_id(), pfn_, /*readonly=*/false));
  granted_ = true;
  std::memset(dom_.page(pfn_), 0, kPageSize);
  XP_TRY(ring_.init(dom_.page(pfn_), kPageSize));
  XP_ASSIGN_OR_RETURN(port_, evtchn_.bind_unbound(xenbus_->backend_id()));
  bound_ = true;
  return xenbus_->publish({{"ring-ref", std::to_string(ref_)}, {"event-channel", std::to_string(port_)}});
}

void SimEchoFrontend::wait_event(std::chrono::milliseconds limit) noexcept {
  pollfd pfd{evtchn_.fd(), POLLIN, 0};
  (void)::poll(&pfd, 1, static_cast<int>(limit.count()));
  // The guest's handle may carry other frontends' ports: unmask whatever
  // fired; each frontend re-checks its own ring anyway.
  for (unsigned i = 0; i < 1024; ++i) {
    auto p = evtchn_.pending();
    if (!p) break;
    (void)evtchn_.unmask(*p);
  }
}

Result<SimEchoFrontend::Exchange> SimEchoFrontend::exchange(std::span<const uint64_t> values) noexcept {
  if (!bound_) return unexpected(ENOTCONN);
  std::unordered_map<uint64_t, uint64_t> outstanding;  // id -> value
  Exchange ex;
  size_t sent = 0;
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  std::array<echo_response, 64> rsp;
  while (ex.ok + ex.errors < values.size()) {
    bool pushed = false;
    while (sent < values.size() && ring_.free_slots() > 0) {
      echo_request rq{next_id_++, values[sent]};
      if (!ring_.push(rq)) break;
      outstanding.emplace(rq.id, rq.value);
      ++sent;
      pushed = true;
    }
    if (pushed && ring_.flush()) XP_TRY(evtchn_.notify(port_));
    const unsigned got = ring_.take_responses(rsp);
    for (unsigned i = 0; i < got; ++i) {
      const echo_response r = rsp[i];
      auto it = outstanding.find(r.id);
      if (it == outstanding.end()) return unexpected(EPROTO);
      const uint64_t v = it->second;
      outstanding.erase(it);
      if (v == kEchoReservedValue) {
        if (r.status != kEchoStatusError) return unexpected(EPROTO);
        ++ex.errors;
      } else {
        if (r.status != kEchoStatusOk || r.value != v + 1) return unexpected(EPROTO);
        ++ex.ok;
      }
    }
    if (got > 0) {
      deadline = std::chrono::steady_clock::now() + timeout_;
      continue;
    }
    if (ring_.final_check_responses()) continue;
    if (std::chrono::steady_clock::now() > deadline) return unexpected(ETIMEDOUT);
    wait_event(std::chrono::milliseconds(10));
  }
  return ex;
}

Result<SimEchoFrontend::Exchange> SimEchoFrontend::exchange(uint32_t n) noexcept {
  std::vector<uint64_t> values(n);
  for (auto& v : values) v = next_value_++;
  return exchange(values);
}

Status SimEchoFrontend::release() noexcept {
  Status result = ok();
  if (bound_) {
    if (auto u = evtchn_.unbind(port_); !u) result = u;
    bound_ = false;
  }
  if (granted_) {
    // EBUSY: the backend still has the ring mapped after it said Closed.
    if (auto e = dom_.end_access(ref_); !e) {
      result = e;
    } else {
      granted_ = false;
    }
  }
  if (have_page_ && !granted_) {
    dom_.free_pages(pfn_, 1);
    have_page_ = false;
  }
  return result;
}

Status SimEchoFrontend::close() noexcept {
  XP_TRY(xenbus_->close());
  return release();
}

Status SimEchoFrontend::restart() noexcept { return xenbus_->restart(); }

}  // namespace xenpath::sim
