{
  # The native addon: node-addon-api 8 (C++ exceptions on) over the system
  # libbpf (Debian libbpf 1.1). Built by scripts/build.mjs with
  # --nodedir pointing at installed Node headers (Node-API is ABI-stable).
  "targets": [
    {
      "target_name": "weir",
      "sources": [
        "native/abi.cc",
        "native/addon.cc",
        "native/args.cc",
        "native/bpf_object.cc",
        "native/errors.cc",
        "native/libbpf_log.cc",
        "native/link.cc",
        "native/map.cc",
        "native/program.cc",
        "native/ring_buffer.cc"
      ],
      "include_dirs": [
        "<(module_root_dir)/node_modules/node-addon-api",
        "<(module_root_dir)/bpf/include"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "_GNU_SOURCE"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
