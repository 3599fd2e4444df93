import Synchronization

/// Up to eight exact counts kept per shard of vCPUs, each shard on its own
/// 64-byte cache line: an exit adds to its own vCPU's line, so no line is
/// written by every exit of every vCPU (the 4-thread cost stays that of one
/// thread). vCPU `n` uses shard `n % shards`; readers sum the shards.
/// A noncopyable struct, so its owner reaches the counts in one load.
/// Adds and sums are sequentially consistent (RateLimiter.suppress and
/// takePending order them against a flag); on x86 that is the same lock
/// add and plain loads as relaxed.
struct ShardedCounts: ~Copyable, @unchecked Sendable {
    static let shards = 16
    /// Counts per shard: one cache line of 8-byte counters.
    static let width = 8
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    init() {
        let count = ShardedCounts.shards * ShardedCounts.width
        words = UnsafeMutableRawPointer.allocate(byteCount: count * 8, alignment: 64)
            .bindMemory(to: Atomic<UInt64>.self, capacity: count)
        for index in 0..<count { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: ShardedCounts.shards * ShardedCounts.width)
        UnsafeMutableRawPointer(words).deallocate()
    }

    @inline(__always)
    private func word(_ slot: Int, _ shard: UInt32) -> Int {
        Int(shard & UInt32(ShardedCounts.shards - 1)) &* ShardedCounts.width &+ (slot & (ShardedCounts.width - 1))
    }

    /// Adds one to `slot` in `shard`'s line; returns that shard's count before.
    @inline(__always) @discardableResult
    func increment(_ slot: Int, shard: UInt32) -> UInt64 {
        words[word(slot, shard)].wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
    }

    /// The sum over the shards.
    func total(_ slot: Int) -> UInt64 {
        var sum: UInt64 = 0
        for shard in 0..<UInt32(ShardedCounts.shards) {
            sum &+= words[word(slot, shard)].load(ordering: .sequentiallyConsistent)
        }
        return sum
    }
}
