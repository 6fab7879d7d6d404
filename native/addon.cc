// weir's native addon: lifecycle and marshalling of libbpf objects, no
// policy. One class per kernel object (bpf_object.h, program.h, map.h,
// link.h, ring_buffer.h) plus the stateless queries below.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "abi.h"
#include "addon_data.h"
#include "args.h"
#include "bpf_object.h"
#include "errors.h"
#include "libbpf_log.h"
#include "link.h"
#include "map.h"
#include "program.h"
#include "ring_buffer.h"

namespace weir {

namespace {

Napi::Value Abi(const Napi::CallbackInfo& info) { return AbiInfo(info.Env()); }

Napi::Value LibbpfVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), std::to_string(libbpf_major_version()) + "." +
                                           std::to_string(libbpf_minor_version()));
}

Napi::Value NumPossibleCpus(const Napi::CallbackInfo& info) {
  int n = libbpf_num_possible_cpus();
  if (n < 0) ThrowSysError(info.Env(), -n, "libbpf_num_possible_cpus");
  return Napi::Number::New(info.Env(), n);
}

// The cgroup v2 id of a directory: the kernfs node id that name_to_handle_at
// returns as the file handle, the same number bpf_get_current_cgroup_id()
// and bpf_skb_cgroup_id() report in BPF programs.
Napi::Value CgroupId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  union {
    struct file_handle fh;
    char buf[sizeof(struct file_handle) + sizeof(uint64_t)];
  } h;
  std::memset(&h, 0, sizeof(h));
  h.fh.handle_bytes = sizeof(uint64_t);
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, path.c_str(), &h.fh, &mount_id, 0) < 0) {
    ThrowSysError(env, errno, "name_to_handle_at", "'" + path + "'", path);
  }
  if (h.fh.handle_bytes != sizeof(uint64_t)) {
    ThrowError(env, "cgroupId(): '" + path + "' is not on a cgroup v2 filesystem (handle of " +
                        std::to_string(h.fh.handle_bytes) + " bytes)");
  }
  uint64_t id;
  std::memcpy(&id, h.fh.f_handle, sizeof(id));
  return Napi::BigInt::New(env, id);
}

Napi::Value ProgQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "cgroupPath");
  uint32_t attach_type = U32Arg(info, 1, "attachType");
  uint32_t query_flags = IsMissing(info, 2) ? 0 : U32Arg(info, 2, "queryFlags");
  int cg = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) ThrowSysError(env, errno, "open", "cgroup '" + path + "'", path);
  std::vector<uint32_t> ids(64);
  uint32_t attach_flags = 0;
  uint32_t cnt = 0;
  int err = 0;
  for (;;) {
    cnt = static_cast<uint32_t>(ids.size());
    if (bpf_prog_query(cg, static_cast<enum bpf_attach_type>(attach_type), query_flags, &attach_flags, ids.data(),
                       &cnt) == 0) {
      break;
    }
    err = errno;
    // ENOSPC: more programs than room; the kernel says how many.
    if (err != ENOSPC || cnt <= ids.size()) break;
    ids.resize(cnt);
    err = 0;
  }
  close(cg);
  if (err != 0) ThrowSysError(env, err, "bpf_prog_query", "cgroup '" + path + "'", path);
  Napi::Object out = Napi::Object::New(env);
  out.Set("attachFlags", Napi::Number::New(env, attach_flags));
  Napi::Array arr = Napi::Array::New(env, cnt);
  for (uint32_t i = 0; i < cnt; i++) arr.Set(i, Napi::Number::New(env, ids[i]));
  out.Set("progIds", arr);
  return out;
}

Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0, "id");
  int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) ThrowSysError(env, errno, "bpf_prog_get_fd_by_id", "program id " + std::to_string(id));
  bpf_prog_info pinfo = {};
  uint32_t len = sizeof(pinfo);
  int ret = bpf_obj_get_info_by_fd(fd, &pinfo, &len);
  int err = errno;
  close(fd);
  if (ret < 0) ThrowSysError(env, err, "bpf_obj_get_info_by_fd", "program id " + std::to_string(id));
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, pinfo.id));
  o.Set("name", Napi::String::New(env, pinfo.name));
  o.Set("type", Napi::Number::New(env, pinfo.type));
  const char* type_name = libbpf_bpf_prog_type_str(static_cast<enum bpf_prog_type>(pinfo.type));
  o.Set("typeName", type_name != nullptr ? type_name : "unknown");
  char hex[2 * BPF_TAG_SIZE + 1];
  for (int i = 0; i < BPF_TAG_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", pinfo.tag[i]);
  o.Set("tag", hex);
  // Instructions the verifier processed to accept it (5.16+; 0 before).
  o.Set("verifiedInsns", Napi::Number::New(env, pinfo.verified_insns));
  o.Set("xlatedInsns", Napi::Number::New(env, pinfo.xlated_prog_len / 8));
  return o;
}

Napi::Value LinkInfoById(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0, "id");
  int fd = bpf_link_get_fd_by_id(id);
  if (fd < 0) ThrowSysError(env, errno, "bpf_link_get_fd_by_id", "link id " + std::to_string(id));
  std::string context = "link id " + std::to_string(id);
  try {
    Napi::Object o = LinkInfoToJs(env, fd, context.c_str());
    close(fd);
    return o;
  } catch (...) {
    close(fd);
    throw;
  }
}

// Whether the kernel offers a helper (BPF_FUNC_*) to a program type
// (BPF_PROG_TYPE_*): libbpf loads a tiny program that calls it and reads
// the verifier's answer. Needs the privileges of a load.
Napi::Value ProbeBpfHelper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t prog_type = U32Arg(info, 0, "progType");
  uint32_t helper = U32Arg(info, 1, "helperId");
  int r = libbpf_probe_bpf_helper(static_cast<enum bpf_prog_type>(prog_type), static_cast<enum bpf_func_id>(helper),
                                  nullptr);
  if (r < 0) {
    ThrowSysError(env, -r, "libbpf_probe_bpf_helper",
                  "program type " + std::to_string(prog_type) + ", helper " + std::to_string(helper));
  }
  return Napi::Boolean::New(env, r > 0);
}

// What a bpffs pin is: the anon inode behind the fd names the object kind.
Napi::Value PinnedObjectType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) ThrowSysError(env, errno, "bpf_obj_get", "'" + path + "'", path);
  char link[64];
  char target[128] = {};
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  close(fd);
  std::string t = n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
  const char* kind = "unknown";
  if (t == "anon_inode:bpf-map") kind = "map";
  else if (t == "anon_inode:bpf-prog") kind = "prog";
  // The kernel names link files "bpf_link" at creation, "bpf-link" when
  // reopened from a pin (bpf_link_new_fd); accept both.
  else if (t == "anon_inode:bpf-link" || t == "anon_inode:bpf_link") kind = "link";
  return Napi::String::New(env, kind);
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define C(N) c.Set(#N, Napi::Number::New(env, static_cast<double>(N)))
  // map update flags
  C(BPF_ANY);
  C(BPF_NOEXIST);
  C(BPF_EXIST);
  C(BPF_F_LOCK);
  // attach and query flags
  C(BPF_F_ALLOW_OVERRIDE);
  C(BPF_F_ALLOW_MULTI);
  C(BPF_F_REPLACE);
  C(BPF_F_QUERY_EFFECTIVE);
  // map creation flags
  C(BPF_F_NO_PREALLOC);
  C(BPF_F_RDONLY_PROG);
  C(BPF_F_WRONLY_PROG);
  C(BPF_F_MMAPABLE);
  // attach types
  C(BPF_CGROUP_INET_INGRESS);
  C(BPF_CGROUP_INET_EGRESS);
  C(BPF_CGROUP_INET_SOCK_CREATE);
  C(BPF_CGROUP_INET_SOCK_RELEASE);
  C(BPF_CGROUP_SOCK_OPS);
  C(BPF_CGROUP_INET4_BIND);
  C(BPF_CGROUP_INET6_BIND);
  C(BPF_CGROUP_INET4_CONNECT);
  C(BPF_CGROUP_INET6_CONNECT);
  C(BPF_CGROUP_INET4_POST_BIND);
  C(BPF_CGROUP_INET6_POST_BIND);
  C(BPF_CGROUP_UDP4_SENDMSG);
  C(BPF_CGROUP_UDP6_SENDMSG);
  C(BPF_CGROUP_UDP4_RECVMSG);
  C(BPF_CGROUP_UDP6_RECVMSG);
  C(BPF_CGROUP_INET4_GETPEERNAME);
  C(BPF_CGROUP_INET6_GETPEERNAME);
  C(BPF_CGROUP_INET4_GETSOCKNAME);
  C(BPF_CGROUP_INET6_GETSOCKNAME);
  C(BPF_CGROUP_GETSOCKOPT);
  C(BPF_CGROUP_SETSOCKOPT);
  C(BPF_CGROUP_DEVICE);
  C(BPF_CGROUP_SYSCTL);
  // program types
  C(BPF_PROG_TYPE_SOCKET_FILTER);
  C(BPF_PROG_TYPE_SCHED_CLS);
  C(BPF_PROG_TYPE_XDP);
  C(BPF_PROG_TYPE_CGROUP_SKB);
  C(BPF_PROG_TYPE_CGROUP_SOCK);
  C(BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
  C(BPF_PROG_TYPE_SOCK_OPS);
  C(BPF_PROG_TYPE_CGROUP_SOCKOPT);
  C(BPF_PROG_TYPE_TRACEPOINT);
  C(BPF_PROG_TYPE_KPROBE);
  // map types
  C(BPF_MAP_TYPE_HASH);
  C(BPF_MAP_TYPE_ARRAY);
  C(BPF_MAP_TYPE_PROG_ARRAY);
  C(BPF_MAP_TYPE_PERCPU_HASH);
  C(BPF_MAP_TYPE_PERCPU_ARRAY);
  C(BPF_MAP_TYPE_LRU_HASH);
  C(BPF_MAP_TYPE_LRU_PERCPU_HASH);
  C(BPF_MAP_TYPE_LPM_TRIE);
  C(BPF_MAP_TYPE_ARRAY_OF_MAPS);
  C(BPF_MAP_TYPE_HASH_OF_MAPS);
  C(BPF_MAP_TYPE_SK_STORAGE);
  C(BPF_MAP_TYPE_RINGBUF);
  // link types
  C(BPF_LINK_TYPE_CGROUP);
  // helpers probed at load (probeBpfHelper)
  C(BPF_FUNC_loop);
#undef C
  return c;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfPrint();
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);

  Napi::Function bpf_object = BpfObject::Init(env);
  Napi::Function program = Program::Init(env);
  Napi::Function map = Map::Init(env);
  Napi::Function link = Link::Init(env);
  Napi::Function ring_buffer = RingBuffer::Init(env);
  data->bpf_object = Napi::Persistent(bpf_object);
  data->program = Napi::Persistent(program);
  data->map = Napi::Persistent(map);
  data->link = Napi::Persistent(link);
  data->ring_buffer = Napi::Persistent(ring_buffer);

  exports.Set("BpfObject", bpf_object);
  exports.Set("Program", program);
  exports.Set("Map", map);
  exports.Set("Link", link);
  exports.Set("RingBuffer", ring_buffer);
  exports.Set("abi", Napi::Function::New<Abi>(env, "abi"));
  exports.Set("libbpfVersion", Napi::Function::New<LibbpfVersion>(env, "libbpfVersion"));
  exports.Set("numPossibleCpus", Napi::Function::New<NumPossibleCpus>(env, "numPossibleCpus"));
  exports.Set("cgroupId", Napi::Function::New<CgroupId>(env, "cgroupId"));
  exports.Set("progQuery", Napi::Function::New<ProgQuery>(env, "progQuery"));
  exports.Set("progInfo", Napi::Function::New<ProgInfo>(env, "progInfo"));
  exports.Set("linkInfoById", Napi::Function::New<LinkInfoById>(env, "linkInfoById"));
  exports.Set("probeBpfHelper", Napi::Function::New<ProbeBpfHelper>(env, "probeBpfHelper"));
  exports.Set("pinnedObjectType", Napi::Function::New<PinnedObjectType>(env, "pinnedObjectType"));
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

}  // namespace weir

// NODE_API_MODULE pastes the name into an identifier: no qualified names.
static Napi::Object InitWeir(Napi::Env env, Napi::Object exports) { return weir::Init(env, exports); }
NODE_API_MODULE(weir, InitWeir)
