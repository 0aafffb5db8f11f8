// xenpath-blkback: the blkif backend daemon.
//
// In a dom0 or driver domain (/dev/xen/gntdev and /dev/xen/evtchn) it serves
// every backend/vbd (or --backend-type) device the toolstack gives this
// domain, through libxenstore/libxengnttab/libxenevtchn; the kernel's
// xen-blkback must not be loaded (it would race us for the same devices).
// The same daemon on the simulated host, with simulated guests doing I/O
// through it, is `xenpath-sim blkback` (sim/, not linked here).
//
// Operators: SIGTERM/SIGINT disconnect every device cleanly (all grants
// unmapped) and exit; a restarted daemon takes back devices that are still
// in InitWait/Connected. --stats-file is a JSON document rewritten every
// interval (devices, per-VBD counters, mapped grant pages, bound ports).
#include "blkback/blk_service.h"
#include "common/daemon_main.h"

int main(int argc, char** argv) {
  return xenpath::daemon_main<xenpath::BlkbackService>(
      argc, argv, "xenpath-blkback: the blkif backend daemon of a Xen dom0 or driver domain");
}
