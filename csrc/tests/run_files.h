// A run's folder, as tests/test_cuda_sources.py (host_check.cu) and
// tests/test_cuda_emulated.py (emulate.cpp) write it: DIR/meta.txt, the inputs
// DIR/<name>.bin (float32, or int64 step tables), the outputs DIR/out_<name>.bin
// (float32). A missing or short input ends the program with exit code 2.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

inline std::string g_run_dir;  // DIR, from the command line

inline bool bin_exists(const char* name) {
  FILE* f = fopen((g_run_dir + "/" + name + ".bin").c_str(), "rb");
  if (f != nullptr) fclose(f);
  return f != nullptr;
}

template <typename V> std::vector<V> read_bin(const char* name, size_t count) {
  std::vector<V> v(count);
  const std::string path = g_run_dir + "/" + name + ".bin";
  FILE* f = fopen(path.c_str(), "rb");
  if (f == nullptr) { fprintf(stderr, "cannot open %s\n", path.c_str()); exit(2); }
  if (fread(v.data(), sizeof(V), count, f) != count) { fprintf(stderr, "short %s\n", path.c_str()); exit(2); }
  fclose(f);
  return v;
}

inline void write_bin(const char* name, const std::vector<float>& v) {
  const std::string path = g_run_dir + "/out_" + name + ".bin";
  FILE* f = fopen(path.c_str(), "wb");
  if (f == nullptr || fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) {
    fprintf(stderr, "cannot write %s\n", path.c_str());
    exit(2);
  }
  fclose(f);
}

// meta.txt's path.
inline std::string meta_path() { return g_run_dir + "/meta.txt"; }
