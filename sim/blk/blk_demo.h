// `xenpath-sim blkback`: the blkif backend daemon on the simulated host with
// simulated guests driving verified I/O through it (blk_demo.cc).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "blkback/blk_device.h"
#include "common/daemon_main.h"
#include "sim/sim_demo.h"

namespace xenpath::sim {

struct BlkDemoOptions {
  SimRunOptions run;
  unsigned vbds = 1;
  unsigned queues = 2;
  std::string image_dir;
  uint64_t image_mib = 64;
  unsigned queue_depth = 32;
  uint32_t block_size = 4096;
  unsigned read_percent = 70;
  bool persistent_front = true;
  bool verify = true;
  // --image [FORMAT:]PATH: serve this existing image instead of fresh raw
  // files (one guest: the image itself; several: a differencing VHD child
  // of it each, made in --image-dir). The verify load accepts what the
  // image held and checks what it writes.
  std::string image;
  // --read-only: the guests only read their disk, once, in order, and the
  // run prints its SHA-256 (compare with `qemu-img convert -O raw | sha256sum`).
  bool read_only = false;
  // --journal PATH: the verify load's flush journal (BlkLoadSpec::journal_fd).
  std::string journal;
  // Extra backend keys for one guest's VBDs at plug time, by domid (the
  // toolstack writes them with params/mode; e.g. qos-read-iops).
  std::map<DomId, std::vector<std::pair<std::string, std::string>>> backend_keys;
};

// The run's (--guests, --seconds, --json), --vbds, --queues, --image-dir,
// --image-mib, --queue-depth, --block-size, --read-percent, --no-verify,
// --no-persistent-front, --image, --read-only, --journal.
void add_blkback_demo_cli(CLI::App& app, BlkDemoOptions& opt);

// Runs the daemon and the guests; exit status 0 when the run and its
// self-check passed, 1 when they did not, 2 when it could not start.
int run_blkback_demo(const DaemonCli& cli, const VbdOptions& vbd, const BlkDemoOptions& opt);

}  // namespace xenpath::sim
