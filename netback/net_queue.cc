#include "netback/net_queue.h"

#include <algorithm>
#include <utility>

namespace xenpath {

void VifQueueCore::halt(const char* why) noexcept {
  if (halted) return;
  halted = true;
  stats.tx_ring.halted.set(1);
  log.error("frontend misbehaved ({}): queue halted", why);
  if (on_halt) on_halt(EPROTO);
}

VifQueue::VifQueue(NetWorker& worker, const Config& config, VifQueueStats& stats, HaltSink on_halt) noexcept
    : XenRingPoller(worker), core_(worker, config, stats, std::move(on_halt)), tx_(core_), rx_(core_) {}

Result<std::unique_ptr<VifQueue>> VifQueue::start(NetWorker& worker, const Config& config, VifQueueStats& stats,
                                                  HaltSink on_halt) noexcept {
  return start_with<VifQueue>([&] { return new VifQueue(worker, config, stats, std::move(on_halt)); });
}

Status VifQueue::init() noexcept {
  Config& config = core_.config;
  if (config.port == nullptr || config.pool == nullptr || config.burst == 0 || config.burst > kMaxBurst ||
      config.port_queue >= config.port->tx_queues() || config.port_queue >= config.port->rx_queues() ||
      config.rx_backlog == 0) {
    return unexpected(EINVAL);
  }
  if (!config.zero_copy || !config.port->caps().external_buffers) {
    // The port cannot be handed guest pages (a NIC would DMA from them
    // without their being DMA-mapped): copy every byte instead.
    config.zero_copy = false;
    config.tx_limits.copy_below = UINT16_MAX;
  }
  // A port that hands over the host's GSO packets whole (vhost-net) leaves
  // software GRO nothing to merge; it is for ports that cut them (net_tap).
  if (config.port->caps().rx_gso) config.rx_gro = false;
  if (config.pool->data_room() == 0) return unexpected(EINVAL);
  try {
    // One list per VIF; a queue on its own (no device) keeps its own.
    if (!config.multicast) config.multicast = std::make_shared<VifMulticast>();
  } catch (...) {
    return unexpected(ENOMEM);
  }
  XP_TRY(tx_.init());
  XP_TRY(rx_.init());

  // One channel for both rings unless the frontend split them.
  shared_evtchn_ = config.rx_remote_port == config.tx_remote_port;
  XP_TRY(tx_evtchn_.bind(worker_, config.frontend, config.tx_remote_port, this));
  if (!shared_evtchn_) XP_TRY(rx_evtchn_.bind(worker_, config.frontend, config.rx_remote_port, this));
  period_ = config.port_poll;
  // With a receive wake-up the period only paces housekeeping; credit
  // replenish has its own exact timer (VifTxPath).
  if (rx_.has_wait_fd()) period_ = std::max<std::chrono::microseconds>(period_, kHousekeepingPeriod);
  // The expiry itself is the point: the reactor polls us in that iteration.
  if (auto t = worker_.reactor().add_oneshot_timer([this] { timer_armed_ = false; })) {
    timer_ = *t;
    have_timer_ = true;
  }
  start_polling();
  return ok();
}

void VifQueue::shut_down(bool keep_tx_pages) noexcept {
  // Nothing polls or wakes us any more, then each path lets go of the guest.
  stop_polling();
  if (std::exchange(have_timer_, false)) worker_.reactor().cancel_timer(timer_);
  rx_evtchn_.unbind();
  tx_evtchn_.unbind();
  rx_.teardown();
  tx_.teardown(keep_tx_pages);
  stopped_ = true;
}

void VifQueue::abandon() noexcept {
  if (stopped_) return;
  core_.halted = true;
  shut_down(/*keep_tx_pages=*/true);
}

Status VifQueue::stop() noexcept {
  if (stopped_) return ok();
  core_.halted = true;  // consume nothing more
  (void)publish();
  tx_.drop_backlog();
  rx_.drop_queued();
  (void)tx_.reap();
  (void)publish();
  // A page still attached somewhere may be read until its packet is freed;
  // the free callback (any thread) also still touches this queue.
  if (tx_.pages_in_use()) return unexpected(EBUSY);
  teardown();
  return ok();
}

VifQueue::~VifQueue() {
  if (!stopped_) {
    if (tx_.pages_in_flight() != 0) {
      core_.log.error("destroyed with {} guest pages still attached to packets", tx_.pages_in_flight());
    }
    teardown();
  }
}

void VifQueue::on_event(EvtchnPort local) noexcept {
  if (tx_evtchn_.is(local)) {
    core_.stats.tx_ring.events_received.add();
    tx_evtchn_.reported();
  }
  if (rx_evtchn_.is(local)) {
    core_.stats.rx_ring.events_received.add();
    rx_evtchn_.reported();
  }
}

bool VifQueue::publish() noexcept {
  bool notify_tx = false;
  bool notify_rx = false;
  const bool any_tx = tx_.publish(notify_tx);
  const bool any_rx = rx_.publish(notify_rx);
  if (notify_tx) tx_evtchn_.notify();
  if (notify_rx) {
    if (!shared_evtchn_) rx_evtchn_.notify();
    else if (!notify_tx) tx_evtchn_.notify();  // one channel: one kick
  }
  return any_tx || any_rx;
}

bool VifQueue::poll() noexcept {
  if (stopped_) return false;
  tx_.awake();
  bool work = tx_.reap();
  if (!core_.halted) {
    work |= tx_.poll();
    work |= rx_.poll();
  }
  work |= tx_.reap();
  work |= publish();
  return work;
}

void VifQueue::arm_housekeeping() noexcept {
  // What no event announces: packets in a port without a receive wake-up,
  // RX packets waiting for guest buffers (drain and stall timeouts), TX
  // packets the port refused. Idle, none of it: no wake-up (issue 16: a
  // 10 ms period cost an idle VIF 16 % of a dom0 CPU). Armed once per
  // expiry; a deadline that is no longer needed costs one empty wake-up.
  const bool need = !core_.halted && (!rx_.has_wait_fd() || rx_.queued() != 0 || rx_.stalled() || tx_.backlogged());
  if (!need || timer_armed_ || !have_timer_) return;
  Reactor& r = worker_.reactor();
  timer_armed_ = r.arm_timer(timer_, r.now() + period_).has_value();
}

bool VifQueue::arm() noexcept {
  if (stopped_) return false;
  bool late = publish();
  tx_evtchn_.unmask_reported();
  rx_evtchn_.unmask_reported();
  rx_.update_wait_fd(core_.halted);
  arm_housekeeping();
  // Dekker pair with the TX page free callback: either it sees us asleep
  // (and kicks the eventfd), or we see its bit here.
  tx_.sleeping();
  if (tx_.pages_released()) return true;
  if (core_.halted) return late;
  if (tx_.again() || rx_.again()) return true;
  if (tx_.final_check()) return true;
  if (rx_.inbox_pending()) return true;
  // RX: packets waiting for guest buffers: wake when it posts some.
  if (rx_.final_check()) return true;
  return late;
}

}  // namespace xenpath
