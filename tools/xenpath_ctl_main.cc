// xenpath-ctl: inspect and tune a running xenpath daemon through its
// control socket (tools/ctl/ctl.h; docs/ops.md).
#include <iostream>
#include <string>
#include <vector>

#include "tools/ctl/ctl.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return xenpath::ctl::run(args, std::cout, std::cerr);
}
