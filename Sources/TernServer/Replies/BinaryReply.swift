import TernCore

/// A binary-protocol request's identity, kept on its reply slot: the reply (a meta reply from
/// the text path) is turned into a response packet when the slot leaves, in request order.
struct BinaryContext {
    var opcode: UInt8
    var opaque: UInt32
    /// The key's length at the front of the slot's key bytes (a text get adds its own copy).
    var keyLength: Int
}

extension ReplySlot {
    /// A binary client's reply: the text path's reply held in the slot becomes one response
    /// packet (or nothing, for a quiet request that succeeded or missed).
    func emitBinary(_ context: BinaryContext, into output: ByteBuffer) {
        output.appendBinaryResponse(to: data.readable, context, key: keyBytes.readable)
    }
}

extension ByteBuffer {
    /// Writes the response packet for a backend reply straight into this buffer: header,
    /// extras, key and value in one reservation, the value copied once from the reply.
    func appendBinaryResponse(to reply: UnsafeRawBufferPointer, _ context: BinaryContext, key keyBytes: UnsafeRawBufferPointer) {
        let response = BinaryTranslator.plan(toMeta: reply, opcodeByte: context.opcode)
        guard !response.isSilent else { return }
        let key = UnsafeRawBufferPointer(rebasing: keyBytes.prefix(context.keyLength))
        BinaryTranslator.withBody(response, reply: reply, key: key) { extras, key, value in
            let length = BinaryRequest.headerLength + extras.count + key.count + value.count
            let packet = reserve(length)
            BinaryTranslator.writeHeader(response, opcode: context.opcode, opaque: context.opaque, keyLength: key.count, to: packet)
            var at = packet + BinaryRequest.headerLength
            if let base = extras.baseAddress, extras.count > 0 { at.copyMemory(from: base, byteCount: extras.count); at += extras.count }
            if let base = key.baseAddress, key.count > 0 { at.copyMemory(from: base, byteCount: key.count); at += key.count }
            if let base = value.baseAddress, value.count > 0 { at.copyMemory(from: base, byteCount: value.count) }
            commit(length)
        }
    }
}
