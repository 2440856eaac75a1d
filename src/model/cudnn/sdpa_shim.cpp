// Prefill attention through cuDNN's fused scaled-dot-product attention (flash attention), built
// with the header-only cuDNN frontend and loaded at run time: libcudnn is dlopen'd by
// qwen3_cudnn_open, never linked, so a binary built with it still runs on a machine without
// cuDNN. The Rust side is src/model/cudnn/{ffi,mod}.rs.
//
// Contract of every function: extern "C", no exception leaves it (each body is one try/catch),
// the return value is a status (QWEN3_CUDNN_OK, _ERROR or _UNSUPPORTED) and on anything but OK
// a one-line message is written into the caller's buffer (NUL-terminated, truncated to fit).
// A context is not thread-safe: the caller serialises every call on it.
//
// The op: L queries at positions [start, start + L) over cache positions [0, end), end =
// start + L, causal with a bottom-right diagonal (query i sees keys <= start + i), H query heads
// over KVH kv heads, head_dim D, bf16 or f16 in and out, f32 softmax, no stats (inference).
// Layouts (element strides, row-major):
//   q, o: (L, H, D)                     -> dims [1, H, L, D],   strides [L*H*D, D, H*D, 1]
//   k, v: one cache layer (capacity, 2, KVH, D), K then V per position, read in place:
//         k = base, v = base + KVH*D    -> dims [1, KVH, end, D], strides [end*P, D, P, 1],
//         P = the position stride, 2*KVH*D for our cache.

#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>

// The frontend reaches every cuDNN entry point through this handle (dynamic loading).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace fe = cudnn_frontend;

extern "C" {

enum { QWEN3_CUDNN_OK = 0, QWEN3_CUDNN_ERROR = 1, QWEN3_CUDNN_UNSUPPORTED = 2 };
enum { QWEN3_CUDNN_BF16 = 0, QWEN3_CUDNN_F16 = 1 };

// One graph's shape; mirrored by `ffi::SdpaShape`.
struct qwen3_cudnn_shape {
    int32_t dtype;               // QWEN3_CUDNN_BF16 or QWEN3_CUDNN_F16
    int32_t reserved;            // 0
    int64_t len;                 // L: queries of the chunk
    int64_t end;                 // keys attended: start + L
    int64_t heads;               // H
    int64_t kv_heads;            // KVH, divides H
    int64_t head_dim;            // D
    int64_t kv_position_stride;  // P: elements from one cache position to the next
    float scale;                 // applied to q.k (1/sqrt(D))
};

struct qwen3_cudnn_context;

}  // extern "C"

namespace {

constexpr int64_t Q_UID = 1;
constexpr int64_t K_UID = 2;
constexpr int64_t V_UID = 3;
constexpr int64_t O_UID = 4;

struct ShapeKey {
    int32_t dtype;
    int64_t len, end, heads, kv_heads, head_dim, kv_position_stride;
    uint32_t scale_bits;

    bool operator==(ShapeKey const& o) const {
        return dtype == o.dtype && len == o.len && end == o.end && heads == o.heads && kv_heads == o.kv_heads &&
               head_dim == o.head_dim && kv_position_stride == o.kv_position_stride && scale_bits == o.scale_bits;
    }
};

struct ShapeKeyHash {
    size_t operator()(ShapeKey const& k) const {
        uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
        auto mix   = [&h](uint64_t v) {
            h ^= v;
            h *= 1099511628211ull;
        };
        mix(static_cast<uint64_t>(k.dtype));
        mix(static_cast<uint64_t>(k.len));
        mix(static_cast<uint64_t>(k.end));
        mix(static_cast<uint64_t>(k.heads));
        mix(static_cast<uint64_t>(k.kv_heads));
        mix(static_cast<uint64_t>(k.head_dim));
        mix(static_cast<uint64_t>(k.kv_position_stride));
        mix(k.scale_bits);
        return static_cast<size_t>(h);
    }
};

struct Plan {
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace_bytes;
};

// A status and its message, raised inside a body and turned into the return value at the edge.
struct Failure {
    int status;
    std::string message;
};

void write_message(char* buf, size_t buf_len, std::string const& text) {
    if (buf == nullptr || buf_len == 0) {
        return;
    }
    std::string line = text;
    for (char& c : line) {
        if (c == '\n' || c == '\r') {
            c = ' ';  // one line
        }
    }
    size_t n = line.size() < buf_len - 1 ? line.size() : buf_len - 1;
    std::memcpy(buf, line.data(), n);
    buf[n] = '\0';
}

// Runs `body` and maps every way out of it onto a status and a message.
template <typename F>
int guarded(char const* what, char* msg, size_t msg_len, F&& body) {
    try {
        body();
        return QWEN3_CUDNN_OK;
    } catch (Failure const& f) {
        write_message(msg, msg_len, std::string(what) + ": " + f.message);
        return f.status;
    } catch (std::exception const& e) {
        write_message(msg, msg_len, std::string(what) + ": " + e.what());
        return QWEN3_CUDNN_ERROR;
    } catch (...) {
        write_message(msg, msg_len, std::string(what) + ": unknown C++ exception");
        return QWEN3_CUDNN_ERROR;
    }
}

// Fails with the frontend's message unless `err` is good; "not supported" codes become
// QWEN3_CUDNN_UNSUPPORTED so the caller can fall back to its own kernel.
void check(fe::error_t err, char const* step) {
    if (err.is_good()) {
        return;
    }
    auto code    = err.get_code();
    int status   = (code == fe::error_code_t::GRAPH_NOT_SUPPORTED || code == fe::error_code_t::HEURISTIC_QUERY_FAILED ||
                  code == fe::error_code_t::GRAPH_EXECUTION_PLAN_CREATION_FAILED)
                       ? QWEN3_CUDNN_UNSUPPORTED
                       : QWEN3_CUDNN_ERROR;
    throw Failure{status, std::string(step) + ": " + err.get_message()};
}

void check_status(cudnnStatus_t status, char const* step) {
    if (status == CUDNN_STATUS_SUCCESS) {
        return;
    }
    std::string detail = fe::detail::get_last_error_string_();
    throw Failure{QWEN3_CUDNN_ERROR,
                  std::string(step) + ": " + fe::detail::get_error_string(status) + (detail.empty() ? "" : " (" + detail + ")")};
}

ShapeKey key_of(qwen3_cudnn_shape const& s) {
    uint32_t bits = 0;
    std::memcpy(&bits, &s.scale, sizeof bits);
    return ShapeKey{s.dtype, s.len, s.end, s.heads, s.kv_heads, s.head_dim, s.kv_position_stride, bits};
}

void check_shape(qwen3_cudnn_shape const& s) {
    auto bad = [](std::string text) { throw Failure{QWEN3_CUDNN_ERROR, "bad shape: " + text}; };
    if (s.dtype != QWEN3_CUDNN_BF16 && s.dtype != QWEN3_CUDNN_F16) bad("dtype " + std::to_string(s.dtype));
    if (s.len < 1 || s.end < s.len) bad("L " + std::to_string(s.len) + ", end " + std::to_string(s.end));
    if (s.heads < 1 || s.kv_heads < 1 || s.heads % s.kv_heads != 0)
        bad(std::to_string(s.heads) + " heads over " + std::to_string(s.kv_heads) + " kv heads");
    if (s.head_dim < 1) bad("head_dim " + std::to_string(s.head_dim));
    if (s.kv_position_stride < 2 * s.kv_heads * s.head_dim)
        bad("kv position stride " + std::to_string(s.kv_position_stride) + " < 2*KVH*D");
}

// The SDPA graph of one shape, not yet built. See the layouts at the top of the file.
std::shared_ptr<fe::graph::Graph> make_graph(qwen3_cudnn_shape const& s) {
    auto const io = s.dtype == QWEN3_CUDNN_BF16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
    int64_t const L = s.len, E = s.end, H = s.heads, KVH = s.kv_heads, D = s.head_dim, P = s.kv_position_stride;

    auto graph = std::make_shared<fe::graph::Graph>();
    graph->set_io_data_type(io)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);

    // q (L, H, D) -> [1, H, L, D]
    auto Q = graph->tensor(fe::graph::Tensor_attributes()
                               .set_name("Q")
                               .set_uid(Q_UID)
                               .set_data_type(io)
                               .set_dim({1, H, L, D})
                               .set_stride({L * H * D, D, H * D, 1}));
    // K and V in place in the cache layer: [1, KVH, end, D], one position every P elements
    auto K = graph->tensor(fe::graph::Tensor_attributes()
                               .set_name("K")
                               .set_uid(K_UID)
                               .set_data_type(io)
                               .set_dim({1, KVH, E, D})
                               .set_stride({E * P, D, P, 1}));
    auto V = graph->tensor(fe::graph::Tensor_attributes()
                               .set_name("V")
                               .set_uid(V_UID)
                               .set_data_type(io)
                               .set_dim({1, KVH, E, D})
                               .set_stride({E * P, D, P, 1}));

    // causal, diagonal at the bottom right: query i (position start + i) sees keys <= start + i
    auto options = fe::graph::SDPA_attributes()
                       .set_name("prefill_attention")
                       .set_generate_stats(false)
                       .set_attn_scale(s.scale)
                       .set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT)
                       .set_diagonal_band_right_bound(0);

    auto outputs = graph->sdpa(Q, K, V, options);
    // o (L, H, D), as q
    outputs[0]->set_output(true).set_uid(O_UID).set_data_type(io).set_dim({1, H, L, D}).set_stride(
        {L * H * D, D, H * D, 1});
    return graph;
}

}  // namespace

struct qwen3_cudnn_context {
    cudnnHandle_t handle = nullptr;
    std::unordered_map<ShapeKey, Plan, ShapeKeyHash> plans;
};

namespace {

Plan const& plan_for(qwen3_cudnn_context* ctx, qwen3_cudnn_shape const& shape) {
    check_shape(shape);
    auto key = key_of(shape);
    if (auto it = ctx->plans.find(key); it != ctx->plans.end()) {
        return it->second;
    }
    auto graph = make_graph(shape);
    check(graph->validate(), "validate");
    check(graph->build_operation_graph(ctx->handle), "build_operation_graph");
    check(graph->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
    check(graph->check_support(), "check_support");
    check(graph->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE), "build_plans");
    int64_t workspace = 0;
    check(graph->get_workspace_size(workspace), "get_workspace_size");
    return ctx->plans.emplace(key, Plan{graph, workspace}).first->second;
}

}  // namespace

extern "C" {

// Opens the library once per process (`path`, or "libcudnn.so.9" through the loader's search
// when null or empty), checks it is cuDNN 9, that the frontend finds the CUDA runtime it
// needs, and creates a handle on the device current on this thread. Writes the cuDNN version
// (e.g. 91300), the CUDA version it was built for (e.g. 13000) and the context; on success
// `msg` holds a one-line description. The library stays loaded for the process's life (the
// frontend caches its entry points), so a second open reuses it and a path that differs from
// the first is refused.
int qwen3_cudnn_open(char const* path,
                     qwen3_cudnn_context** out,
                     int64_t* version,
                     int64_t* cuda_version,
                     char* msg,
                     size_t msg_len) {
    return guarded("cuDNN open", msg, msg_len, [&] {
        if (out == nullptr || version == nullptr || cuda_version == nullptr)
            throw Failure{QWEN3_CUDNN_ERROR, "null argument"};
        *out                = nullptr;
        std::string library = (path != nullptr && path[0] != '\0') ? path : "libcudnn.so.9";
        static std::string opened;
        if (fe::cudnn_dlhandle == nullptr) {
            dlerror();
            void* lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
            if (lib == nullptr) {
                char const* why = dlerror();
                throw Failure{QWEN3_CUDNN_ERROR, "dlopen " + library + ": " + (why ? why : "unknown error")};
            }
            if (dlsym(lib, "cudnnGetVersion") == nullptr) {
                dlclose(lib);
                throw Failure{QWEN3_CUDNN_ERROR, library + " has no cudnnGetVersion: not a cuDNN library"};
            }
            fe::cudnn_dlhandle = lib;
            opened             = library;
        } else if (library != opened) {
            throw Failure{QWEN3_CUDNN_ERROR, "already opened " + opened + " in this process; cannot open " + library};
        }
        auto const v = static_cast<int64_t>(fe::detail::get_backend_version());
        *version     = v;
        if (v < 90000 || v >= 100000) {
            throw Failure{QWEN3_CUDNN_ERROR,
                          library + " is cuDNN " + fe::detail::convert_version_to_str(v) + ", this build needs 9.x"};
        }
        // cuDNN's runtime-compiled engines dlopen libnvrtc.so.<its CUDA major> through its own
        // search (its folder, LD_LIBRARY_PATH, the ld cache), which may miss the one beside our
        // CUDA libraries: load it first through ours (this binary's rpath), so that cuDNN's dlopen
        // finds it loaded. Best effort: without it cuDNN reports the engines it lacks.
        std::string nvrtc = "no libnvrtc preloaded";
        using CudartVersion = size_t (*)();
        auto cudart_version = reinterpret_cast<CudartVersion>(dlsym(fe::cudnn_dlhandle, "cudnnGetCudartVersion"));
        *cuda_version       = cudart_version != nullptr ? static_cast<int64_t>(cudart_version()) : 0;
        if (*cuda_version >= 1000) {
            std::string name = "libnvrtc.so." + std::to_string(*cuda_version / 1000);
            static void* nvrtc_lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
            nvrtc = nvrtc_lib != nullptr ? name + " loaded" : name + " not found by this binary's search";
        }
        // The frontend dlopens libcudart.so.12 or .13 itself (device queries during validation),
        // refusing a process where both load, and passes it structs laid out by the CUDA headers
        // this file was compiled with: that major must be the one loaded.
        std::string cudart = "libcudart.so." + std::to_string(CUDART_VERSION / 1000);
        if (dlopen(cudart.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr) {
            char const* why = dlerror();
            throw Failure{QWEN3_CUDNN_ERROR,
                          "the cuDNN frontend needs " + cudart + " (the CUDA this binary was built with): " +
                              (why ? why : "not found")};
        }
        int device = 0;
        auto cuda  = fe::detail::cuda_get_device(&device);
        if (cuda != cudaSuccess) {
            throw Failure{QWEN3_CUDNN_ERROR, std::string("cudaGetDevice: ") + fe::detail::cuda_get_error_string(cuda)};
        }
        auto ctx = std::make_unique<qwen3_cudnn_context>();
        check_status(fe::detail::create_handle(&ctx->handle), "cudnnCreate");
        *out = ctx.release();
        write_message(msg, msg_len,
                      "cuDNN " + fe::detail::convert_version_to_str(v) + " (for CUDA " +
                          std::to_string(*cuda_version / 1000) + "." + std::to_string(*cuda_version % 1000 / 10) +
                          ") from " + library + ", GPU " + std::to_string(device) + ", " + nvrtc);
    });
}

// Sets the CUDA stream (a cudaStream_t / CUstream) every later execute runs on.
int qwen3_cudnn_set_stream(qwen3_cudnn_context* ctx, void* stream, char* msg, size_t msg_len) {
    return guarded("cuDNN set stream", msg, msg_len, [&] {
        if (ctx == nullptr) throw Failure{QWEN3_CUDNN_ERROR, "null context"};
        check_status(fe::detail::set_stream(ctx->handle, static_cast<cudaStream_t>(stream)), "cudnnSetStream");
    });
}

// Builds (once; later calls look it up) the graph and plan of `shape`, and writes the
// workspace it needs in bytes and how long this call took in nanoseconds (0 on a cache hit is
// not guaranteed: the lookup itself is timed). QWEN3_CUDNN_UNSUPPORTED: cuDNN has no engine for
// this shape on this GPU and library (the message says why).
int qwen3_cudnn_prepare(qwen3_cudnn_context* ctx,
                        qwen3_cudnn_shape const* shape,
                        int64_t* workspace_bytes,
                        int64_t* build_ns,
                        char* msg,
                        size_t msg_len) {
    return guarded("cuDNN attention graph", msg, msg_len, [&] {
        if (ctx == nullptr || shape == nullptr || workspace_bytes == nullptr || build_ns == nullptr)
            throw Failure{QWEN3_CUDNN_ERROR, "null argument"};
        auto started     = std::chrono::steady_clock::now();
        *workspace_bytes = plan_for(ctx, *shape).workspace_bytes;
        *build_ns        = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started)
                        .count();
    });
}

// Queues the attention of `shape` on the context's stream (asynchronous): reads q, k, v,
// writes o, uses `workspace` (at least the bytes prepare reported; may be 0 when that is 0).
// Pointers are device addresses laid out as at the top of this file, 16-byte aligned.
// Builds the plan first if prepare was not called for this shape.
int qwen3_cudnn_execute(qwen3_cudnn_context* ctx,
                        qwen3_cudnn_shape const* shape,
                        uint64_t q,
                        uint64_t k,
                        uint64_t v,
                        uint64_t o,
                        uint64_t workspace,
                        char* msg,
                        size_t msg_len) {
    return guarded("cuDNN attention", msg, msg_len, [&] {
        if (ctx == nullptr || shape == nullptr) throw Failure{QWEN3_CUDNN_ERROR, "null argument"};
        auto const& plan = plan_for(ctx, *shape);
        auto ptr         = [](uint64_t p) { return reinterpret_cast<void*>(static_cast<uintptr_t>(p)); };
        std::unordered_map<int64_t, void*> pack = {{Q_UID, ptr(q)}, {K_UID, ptr(k)}, {V_UID, ptr(v)}, {O_UID, ptr(o)}};
        check(plan.graph->execute(ctx->handle, pack, ptr(workspace)), "execute");
    });
}

// Destroys the handle and every plan; the library stays loaded (see open). Null is a no-op.
int qwen3_cudnn_close(qwen3_cudnn_context* ctx, char* msg, size_t msg_len) {
    return guarded("cuDNN close", msg, msg_len, [&] {
        if (ctx == nullptr) return;
        std::unique_ptr<qwen3_cudnn_context> owned(ctx);
        owned->plans.clear();
        auto status = fe::detail::destroy_handle(owned->handle);
        owned->handle = nullptr;
        check_status(status, "cudnnDestroy");
    });
}

}  // extern "C"
