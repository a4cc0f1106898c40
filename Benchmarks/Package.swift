// swift-tools-version:6.1
// Micro-benchmarks of Tern's pure core with ordo-one/benchmark, reporting allocations beside
// time so regressions show as counts. Run from this folder:  swift package benchmark
import Foundation
import PackageDescription

/// SwiftPM names a path dependency after its folder, which depends on where Tern is cloned.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "TernBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "TernBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TernCore", package: root),
            ],
            path: "Benchmarks/TernBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
