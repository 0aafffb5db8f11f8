#include "sim/blk/sim_blkhost.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/xenbus/keys.h"
#include "common/xenbus/state.h"

namespace xenpath::sim {

Result<std::unique_ptr<SimBlkHost>> SimBlkHost::create(const Options& opts) noexcept {
  if (opts.workers == 0) return unexpected(EINVAL);
  std::unique_ptr<SimBlkHost> h(new (std::nothrow) SimBlkHost(opts));
  if (!h) return unexpected(ENOMEM);
  XP_TRY(h->init());
  return h;
}

Status SimBlkHost::init() noexcept {
  SimHost::Options ho;
  ho.grant_entries_per_domain = opts_.grant_entries;
  XP_ASSIGN_OR_RETURN(host_, SimHost::create(ho));
  platform_ = make_sim_platform(*host_);
  if (!platform_) return unexpected(ENOMEM);
  try {
    // The backend exactly as xenpath-blkback runs it.
    DaemonOptions dopt;
    dopt.name = "blk";
    dopt.workers = opts_.workers;
    dopt.poll_window = opts_.poll_window;
    XP_ASSIGN_OR_RETURN(daemon_, BackendDaemon::create(*platform_, dopt));
    XP_ASSIGN_OR_RETURN(service_, BlkbackService::create(*daemon_, opts_.vbd));
    for (Reactor* r : daemon_->workers()) {
      clockid_t clock{};
      int rc = -1;
      r->call([&] { rc = pthread_getcpuclockid(pthread_self(), &clock); });
      if (rc != 0) return unexpected(rc);
      worker_clocks_.push_back(clock);
    }
    XP_TRY(daemon_->start());

    XP_ASSIGN_OR_RETURN(tools_xs_, host_->open_xenstore(kDom0));
    tools_ = std::make_unique<SimToolstack>(*tools_xs_);
    XP_ASSIGN_OR_RETURN(guest_, host_->create_domain(opts_.guest, opts_.guest_pages, "guest"));
    XP_ASSIGN_OR_RETURN(guest_xs_, host_->open_xenstore(opts_.guest));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return ok();
}

SimBlkHost::~SimBlkHost() {
  while (!disks_.empty()) {
    // detach() forgets the disk even when the close fails (the daemon's
    // stop() then disconnects it).
    if (Status st = detach(disks_.back()->devid); !st) {
      spdlog::warn("simulated host: detach failed: {}", error_string(st.error()));
    }
  }
  guest_evtchns_.clear();
  if (daemon_) daemon_->stop();
  service_.reset();
  daemon_.reset();
  if (host_ && host_->counters().mapped_pages_live.load() != 0) {
    spdlog::error("simulated host: {} guest pages still mapped at teardown",
                  host_->counters().mapped_pages_live.load());
  }
}

Result<EventChannel*> SimBlkHost::open_guest_event_channel() noexcept {
  XP_ASSIGN_OR_RETURN(auto ev, host_->open_event_channel(opts_.guest));
  try {
    guest_evtchns_.push_back(std::move(ev));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return guest_evtchns_.back().get();
}

Result<SimBlkHost::Disk*> SimBlkHost::attach(uint32_t devid, const std::string& params, const FrontOptions& fo,
                                             EventChannel& evtchn, bool read_only) noexcept {
  if (fo.queues == 0) return unexpected(EINVAL);
  try {
    const std::string id = std::to_string(devid);
    XP_TRY(tools_->add_device("vbd", opts_.guest, devid, kDom0,
                              {{"params", params}, {"mode", read_only ? "r" : "w"}, {"type", "file"}},
                              {{"virtual-device", id}, {"device-type", "disk"}}));
    XP_ASSIGN_OR_RETURN(auto disk, connect_disk(*guest_, *guest_xs_, evtchn, opts_.guest, devid, fo));
    disks_.push_back(std::move(disk));
    return disks_.back().get();
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::unique_ptr<SimBlkHost::Disk>> SimBlkHost::connect_disk(SimDomain& guest, XenStore& guest_xs,
                                                                   EventChannel& evtchn, DomId domid, uint32_t devid,
                                                                   const FrontOptions& fo) noexcept {
  XP_ASSIGN_OR_RETURN(auto disk, publish_disk(guest, guest_xs, evtchn, domid, devid, fo));
  XP_TRY(await_disk(*disk));
  return disk;
}

Result<std::unique_ptr<SimBlkHost::Disk>> SimBlkHost::publish_disk(SimDomain& guest, XenStore& guest_xs,
                                                                   EventChannel& evtchn, DomId domid, uint32_t devid,
                                                                   const FrontOptions& fo) noexcept {
  if (fo.queues == 0) return unexpected(EINVAL);
  try {
    auto disk = std::make_unique<Disk>();
    disk->devid = devid;
    XP_ASSIGN_OR_RETURN(disk->xenbus,
                        SimXenbusFrontend::attach(guest_xs, SimToolstack::frontend_path(domid, "vbd", devid)));
    SimXenbusFrontend& xb = *disk->xenbus;
    XP_TRY(xb.wait_backend(XenbusState::kInitWait));

    // What blkfront reads before building its rings.
    const std::string& be = xb.backend_path();
    XP_ASSIGN_OR_RETURN(const uint64_t sectors, read_decimal<uint64_t>(guest_xs, kXsNoTxn, be, "sectors"));
    disk->bytes = sectors * 512;
    auto optional = [&](const char* key) -> uint32_t {
      auto v = read_decimal<uint32_t>(guest_xs, kXsNoTxn, be, key);
      return v ? *v : 0;
    };
    const uint32_t max_indirect = optional("feature-max-indirect-segments");
    const uint32_t max_order = optional("max-ring-page-order");
    const uint32_t max_queues = std::max<uint32_t>(optional("multi-queue-max-queues"), 1);
    disk->persistent = fo.persistent && optional("feature-persistent") == 1;
    disk->max_indirect_segments = fo.indirect ? max_indirect : 0;
    if (fo.ring_order > max_order || (fo.queues > max_queues && !fo.fewer_queues_ok)) return unexpected(EINVAL);
    const unsigned nqueues = std::min<unsigned>(fo.queues, max_queues);

    XsKeys keys;
    keys.emplace_back("protocol", std::string(blk_protocol_name(fo.protocol)));
    keys.emplace_back("feature-persistent", disk->persistent ? "1" : "0");
    if (nqueues > 1) keys.emplace_back("multi-queue-num-queues", std::to_string(nqueues));
    const bool multi_ref = fo.ring_order > 0 || nqueues > 1;
    if (multi_ref) keys.emplace_back("ring-page-order", std::to_string(fo.ring_order));
    for (unsigned q = 0; q < nqueues; ++q) {
      SimBlkfront::Options o;
      o.protocol = fo.protocol;
      o.ring_order = fo.ring_order;
      o.persistent = disk->persistent;
      o.max_indirect_segments = disk->max_indirect_segments;
      o.backend = xb.backend_id();
      XP_ASSIGN_OR_RETURN(auto f, SimBlkfront::create(guest, evtchn, o));
      const std::string prefix = nqueues > 1 ? "queue-" + std::to_string(q) + "/" : "";
      if (multi_ref) {
        for (size_t i = 0; i < f->ring_refs().size(); ++i) {
          keys.emplace_back(prefix + "ring-ref" + std::to_string(i), std::to_string(f->ring_refs()[i]));
        }
      } else {
        keys.emplace_back(prefix + "ring-ref", std::to_string(f->ring_refs()[0]));
      }
      keys.emplace_back(prefix + "event-channel", std::to_string(f->port()));
      disk->queues.push_back(std::move(f));
    }
    XP_TRY(xb.publish(keys));
    return disk;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Status SimBlkHost::detach(uint32_t devid) noexcept {
  auto it = std::find_if(disks_.begin(), disks_.end(), [&](const auto& d) { return d->devid == devid; });
  if (it == disks_.end()) return unexpected(ENOENT);
  Status st = (*it)->xenbus->close();
  // The backend unmapped everything once Closed: the rings' grants can go.
  (*it)->queues.clear();
  (*it)->xenbus.reset();
  disks_.erase(it);
  Status rm = tools_->remove_device("vbd", opts_.guest, devid, kDom0);
  if (!st) return st;
  return rm;
}

const VbdDevice* SimBlkHost::device(uint32_t devid) noexcept {
  const VbdDevice* d = nullptr;
  daemon_->control().call(
      [&] { d = static_cast<const VbdDevice*>(daemon_->driver().device("vbd", opts_.guest, devid)); });
  return d;
}

}  // namespace xenpath::sim
