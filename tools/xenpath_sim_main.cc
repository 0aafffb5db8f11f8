// Placeholder until the simulated-host self-check lands (issue 2 integration).
#include <cstdio>
int main() { std::puts("xenpath-sim: not built yet"); return 1; }
