// nutcracker's command line is read by getopt: a short option's value may be attached
// (`-v7`, `-c/etc/x.yml`) and flags may be grouped (`-dt`).

/// Rewrites getopt-style short options into separate arguments (`-v7` → `-v 7`, `-dv7` →
/// `-d -v 7`) before the argument parser reads them, so a nutcracker command line runs
/// unchanged. A token with a character that is not one of nutcracker's short options is left
/// as it is (the parser then reports it); values of options, and everything after `--`, are
/// never rewritten.
public enum ShortOptions {
    /// nutcracker's flags without a value.
    static let flags: Set<Character> = ["h", "V", "t", "d", "D"]
    /// nutcracker's options that take a value.
    static let valued: Set<Character> = ["v", "o", "c", "s", "a", "i", "p", "m"]

    public static func expand(_ arguments: [String], longOptionsWithValues: Set<String>) -> [String] {
        var result: [String] = []
        var index = 0
        var valueNext = false
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if valueNext {
                result.append(argument)
                valueNext = false
                continue
            }
            if argument == "--" {
                result.append(contentsOf: arguments[(index - 1)...])
                break
            }
            if argument.hasPrefix("--") {
                result.append(argument)
                valueNext = !argument.contains("=") && longOptionsWithValues.contains(String(argument.dropFirst(2)))
                continue
            }
            guard argument.hasPrefix("-"), argument.count >= 2 else {
                result.append(argument)
                continue
            }
            var pieces: [String] = []
            var characters = argument.dropFirst()
            var understood = true
            while let option = characters.first {
                characters = characters.dropFirst()
                if flags.contains(option) {
                    pieces.append("-\(option)")
                } else if valued.contains(option) {
                    pieces.append("-\(option)")
                    if characters.isEmpty { valueNext = true } else { pieces.append(String(characters)) }
                    break
                } else {
                    understood = false
                    break
                }
            }
            if understood {
                result.append(contentsOf: pieces)
            } else {
                result.append(argument)
                valueNext = false
            }
        }
        return result
    }
}
