// swift-tools-version:6.1
import PackageDescription

/// Release builds skip dynamic exclusivity checks: every worker's objects are confined to one
/// thread, and the checks cost ~6% of a pipelined request (measured with perf). Debug builds,
/// which the tests use, keep them.
let releaseSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Tern",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
        // For Benchmarks/ (a separate package, so that its dependencies stay out of CI builds).
        .library(name: "TernCore", targets: ["TernCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // 1.16.2 (the offline list's version) has LogHandler.log(event:), which TernLogHandler implements.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // libev from Debian's libev-dev (no pkg-config file is shipped, so the module map links it).
        .systemLibrary(name: "CLibev", path: "Sources/CLibev"),
        // TLS through Debian's OpenSSL (libssl-dev): a small C shim, non-blocking, driven by
        // the libev loops (no SwiftNIO, no second event loop).
        .target(
            name: "CTernTLS",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // A per-thread cache of heap blocks for ByteBuffer (tern_blocks.h). Its thread-local
        // variable uses the initial-exec TLS model: link it into executables only (tern and the
        // test binary), never into a library loaded with dlopen.
        .target(name: "CTernBlocks"),
        // Pure code: config, hashing, distributions, codecs. No sockets, clocks or globals.
        .target(
            name: "TernCore",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: releaseSettings
        ),
        // Event loops, sockets, buffers, connections, workers.
        .target(
            name: "TernServer",
            dependencies: [
                "TernCore", "CLibev", "CTernTLS", "CTernBlocks",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: releaseSettings
        ),
        .executableTarget(
            name: "tern",
            dependencies: [
                "TernServer", "TernCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Invariants checked by the fuzz targets, replayed by the unit tests over fuzz/corpus.
        .target(name: "TernFuzzChecks", dependencies: ["TernCore"]),
        // libFuzzer entry point when built by fuzz/run.sh, a corpus replayer otherwise.
        .executableTarget(name: "tern-fuzz", dependencies: ["TernFuzzChecks"]),
        .testTarget(name: "TernCoreTests", dependencies: ["TernCore", "TernFuzzChecks"]),
        // Loop-side data structures, in memory.
        .testTarget(name: "TernServerTests", dependencies: ["TernServer", "CTernBlocks"]),
        // Starts real memcached / redis-server processes and the real `tern` binary.
        .testTarget(name: "TernIntegrationTests", dependencies: ["TernCore", "tern", .product(name: "Yams", package: "Yams")]),
    ],
    swiftLanguageModes: [.v6]
)
