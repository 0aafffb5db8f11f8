#include "netback/net_ctrl_channel.h"

#include <algorithm>

namespace xenpath {

NetifCtrlChannel::NetifCtrlChannel(NetWorker& worker, const Config& config, NetifCtrlStats& stats, HashSink on_hash,
                                   HaltSink on_halt) noexcept
    : XenRingPoller(worker),
      config_(config),
      stats_(stats),
      on_hash_(std::move(on_hash)),
      on_halt_(std::move(on_halt)),
      log_(config.log_prefix),
      ctrl_(config.frontend, config.num_queues) {}

Result<std::unique_ptr<NetifCtrlChannel>> NetifCtrlChannel::start(NetWorker& worker, const Config& config,
                                                                  NetifCtrlStats& stats, HashSink on_hash,
                                                                  HaltSink on_halt) noexcept {
  if (config.num_queues == 0) return unexpected(EINVAL);
  return start_with<NetifCtrlChannel>(
      [&] { return new NetifCtrlChannel(worker, config, stats, std::move(on_hash), std::move(on_halt)); });
}

Status NetifCtrlChannel::init() noexcept {
  XP_TRY(map_guest_ring(worker_, config_.frontend, {&config_.ring_ref, 1}, ring_map_, ring_, &stats_.ring, log_,
                        "control"));
  XP_TRY(evtchn_.bind(worker_, config_.frontend, config_.remote_port, this));
  start_polling();
  return ok();
}

void NetifCtrlChannel::teardown() noexcept {
  stop_polling();
  evtchn_.unbind();
  ring_map_.reset();
}

NetifCtrlChannel::~NetifCtrlChannel() { teardown(); }

void NetifCtrlChannel::on_event(EvtchnPort /*local*/) noexcept {
  stats_.ring.events_received.add();
  evtchn_.reported();
}

bool NetifCtrlChannel::poll() noexcept {
  if (halted_) return false;
  xen_netif_ctrl_request reqs[kBurst];
  auto n = ring_.consume(reqs);
  if (!n) {
    halted_ = true;
    log_.error("frontend misbehaved (control ring producer overflow): channel halted");
    if (on_halt_) on_halt_(EPROTO);
    return false;
  }
  if (*n == 0) return false;
  bool changed = false;
  for (unsigned i = 0; i < *n; ++i) {
    const xen_netif_ctrl_response rsp = ctrl_.handle(reqs[i], worker_.grant_table());
    if (rsp.status != XEN_NETIF_CTRL_STATUS_SUCCESS) stats_.ring.error_responses.add();
    const uint16_t t = reqs[i].type;
    if (rsp.status == XEN_NETIF_CTRL_STATUS_SUCCESS &&
        (t == XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM || t == XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS ||
         t == XEN_NETIF_CTRL_TYPE_SET_HASH_KEY || t == XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE ||
         t == XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING)) {
      changed = true;
    }
    (void)ring_.emplace_response([&](xen_netif_ctrl_response& slot) {
      slot.id = rsp.id;
      slot.type = rsp.type;
      slot.status = rsp.status;
      slot.data = rsp.data;
    });
  }
  if (ring_.flush()) evtchn_.notify();
  if (changed) {
    stats_.hash_updates.add();
    if (on_hash_) {
      std::shared_ptr<const NetifCtrl> snap;
      try {
        snap = std::make_shared<const NetifCtrl>(ctrl_);
      } catch (...) {
        log_.error("out of memory publishing the hash configuration");
      }
      if (snap) on_hash_(std::move(snap));
    }
  }
  return true;
}

bool NetifCtrlChannel::arm() noexcept {
  if (halted_) return false;
  evtchn_.unmask_reported();
  return ring_.final_check();
}

}  // namespace xenpath
