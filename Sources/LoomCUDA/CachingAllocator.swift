import Foundation

/// Device memory the way PyTorch's CUDA allocator keeps it: freed blocks are cached by
/// rounded size and handed out again without a driver call (cuMemAlloc and cuMemFree
/// synchronise the device and cost tens of microseconds). Sizes round up to 512 bytes
/// below 1 MiB and to 2 MiB above, so nearby sizes share blocks. When the device is out
/// of memory the cache is released and the allocation tried once more; then the error
/// names the request and what is allocated and cached.
///
/// `allocate` and `release` are the seams: the driver on a GPU, host memory in tests.
/// `reused` sees every block handed out again from the cache (under the emulator it fills
/// the block with NaN, as the emulated driver fills a new one, so that a read of memory
/// this owner never wrote shows).
public final class CachingAllocator: @unchecked Sendable {
    public typealias Address = UInt64
    private let rawAllocate: (Int) throws -> Address
    private let rawRelease: (Address) throws -> Void
    private let reused: ((Address, Int) throws -> Void)?
    private var free: [Int: [Address]] = [:]
    private var sizes: [Address: Int] = [:]
    private var cached = 0
    private let lock = NSLockLike()

    /// Bytes handed out and not yet freed; bytes held from the device (handed out + cached);
    /// the most ever handed out at once.
    public private(set) var allocatedBytes = 0
    public private(set) var reservedBytes = 0
    public private(set) var peakAllocatedBytes = 0
    /// Requests served from the cache / by the device.
    public private(set) var hits = 0
    public private(set) var misses = 0

    public init(allocate: @escaping (Int) throws -> Address, release: @escaping (Address) throws -> Void,
                reused: ((Address, Int) throws -> Void)? = nil) {
        rawAllocate = allocate
        rawRelease = release
        self.reused = reused
    }

    public static func rounded(_ bytes: Int) -> Int {
        let small = 512, large = 2 << 20
        return bytes < (1 << 20) ? max(small, (bytes + small - 1) / small * small) : (bytes + large - 1) / large * large
    }

    public func allocate(_ bytes: Int) throws -> Address {
        let size = CachingAllocator.rounded(bytes)
        return try lock.withLock {
            let address: Address
            if let a = free[size]?.popLast() {
                address = a
                cached -= size
                hits += 1
                try reused?(a, size)
            } else {
                misses += 1
                do {
                    address = try rawAllocate(size)
                } catch {
                    try releaseCachedLocked()
                    do { address = try rawAllocate(size) } catch {
                        throw CUDAError(call: "allocate", message: "out of device memory: \(bytes) bytes requested, "
                            + "\(allocatedBytes) allocated, \(reservedBytes) reserved (\(error))")
                    }
                }
                reservedBytes += size
                sizes[address] = size
            }
            allocatedBytes += size
            peakAllocatedBytes = max(peakAllocatedBytes, allocatedBytes)
            return address
        }
    }

    /// Returns a block to the cache (the device memory stays reserved).
    public func free(_ address: Address) {
        lock.withLock {
            guard let size = sizes[address] else { preconditionFailure("freeing an address this allocator did not hand out") }
            allocatedBytes -= size
            free[size, default: []].append(address)
            cached += size
        }
    }

    /// Gives every cached block back to the device (`torch.cuda.empty_cache()`).
    public func releaseCached() throws { try lock.withLock { try releaseCachedLocked() } }

    private func releaseCachedLocked() throws {
        for (size, blocks) in free {
            for a in blocks {
                try rawRelease(a)
                sizes[a] = nil
                reservedBytes -= size
            }
        }
        free.removeAll()
        cached = 0
    }
}

/// A mutex with a closure API (Foundation's NSLock, kept out of the public surface).
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
