// libFuzzer entry point (built by fuzz/run.sh with -DFUZZING -sanitize=fuzzer,address), or,
// in a normal build, a replayer: `tern-fuzz <target> <file>...` runs files through the checks.
import TernFuzzChecks

#if FUZZING
#if canImport(Glibc)
import Glibc
#endif

/// The target, from TERN_FUZZ_TARGET, read once.
nonisolated(unsafe) private var selectedTarget: FuzzTarget?

/// libFuzzer's driver; SwiftPM links an executable through `<module>_main`, so that is where
/// the driver is started (libFuzzer's own `main` is then not linked in).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("tern_fuzz_main")
public func ternFuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return runFuzzerDriver(&count, &vector) { data, size in fuzzOneInput(data, size) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    if selectedTarget == nil {
        let name = getenv("TERN_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            fatalError("set TERN_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))")
        }
        selectedTarget = target
    }
    FuzzChecks.run(selectedTarget!, UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
#if canImport(Glibc)
import Glibc
#endif

@main
struct TernFuzzReplay {
    static func main() {
        let arguments = CommandLine.arguments
        guard arguments.count >= 3, let target = FuzzTarget(rawValue: arguments[1]) else {
            print("usage: tern-fuzz <\(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|"))> <file>...")
            exit(2)
        }
        for path in arguments.dropFirst(2) {
            FuzzChecks.readFile(path)?.withUnsafeBytes { FuzzChecks.run(target, $0) }
        }
        print("replayed \(arguments.count - 2) inputs through \(target.rawValue)")
    }
}
#endif
