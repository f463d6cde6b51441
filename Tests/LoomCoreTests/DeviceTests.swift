import XCTest
import LoomCore

/// The device seam: storage is an opaque handle, host access only for host tensors or by
/// copies, allocation failures named, and a scoped default backend.
final class DeviceTests: XCTestCase {
    func testIsolatedMemoryIsReachableOnlyThroughUploadAndDownload() throws {
        let device = IsolatedBackend(index: 7)
        let t = Tensor([1, 2, 3, 4], shape: [2, 2], on: device)
        XCTAssertEqual(t.device, .isolated(7))
        XCTAssertNil(t.storage.hostAddress)
        XCTAssertNotEqual(t.storage.handle & (1 << 63), 0, "the handle is no host address")
        XCTAssertThrowsError(try t.withHostMemory { _ in }) { e in
            XCTAssertTrue("\(e)".contains("isolated:7"), "\(e)")
        }
        device.resetCounters()
        XCTAssertEqual(t.floats, [1, 2, 3, 4])
        XCTAssertEqual(device.downloads, 1)
        // A host buffer stages device memory through a copy it owns.
        let staged = HostBuffer(t)
        XCTAssertTrue(staged.isStaged)
        staged.floats[0] = 9
        staged.commit()
        XCTAssertEqual(t.floats, [9, 2, 3, 4])
    }

    func testTensorsMoveBetweenDevicesAndOpsRefuseMixedDevices() throws {
        let device = IsolatedBackend(index: 1)
        let host = Tensor([1, -2, 3], shape: [3])
        let there = try host.to(device)
        XCTAssertEqual(there.device, .isolated(1))
        XCTAssertEqual(try there.relu().to(.cpu).floats, [1, 0, 3])
        XCTAssertEqual(try there.to(.isolated(1)).storage.handle, there.storage.handle)  // already there: no copy
        XCTAssertThrowsError(try host.add(there)) { e in
            XCTAssertTrue("\(e)".contains("cpu") && "\(e)".contains("isolated:1"), "\(e)")
        }
        XCTAssertThrowsError(try host.to(.cuda(3))) { e in XCTAssertTrue("\(e)".contains("cuda:3"), "\(e)") }
    }

    /// A batch the loader made on the shared CPU backend, moved to a rank's backend of one
    /// thread, is computed on by that backend (before, ops kept the loader's backend and each
    /// in-process rank of a convolutional model ran on every core), without a copy.
    func testAHostTensorMovedToAnotherCPUBackendComputesOnItsThreadsWithoutACopy() throws {
        let shared = CPUBackend(threads: 2), rank = CPUBackend(threads: 1)
        let batch = Tensor([1, -2, 3, -4], shape: [2, 2], on: shared)
        let moved = try batch.to(rank)
        XCTAssertTrue(moved.backend === rank)
        XCTAssertTrue(moved.storage === batch.storage, "host backends share memory: no copy")
        XCTAssertTrue(try moved.relu().backend === rank, "ops on the moved batch run on the rank's backend")
        let leaf = Tensor([1, 2], shape: [2], on: shared)
        leaf.requiresGrad = true
        XCTAssertTrue(try leaf.to(rank) === leaf, "a tensor in a graph keeps its identity")
    }

    func testAllocationFailureNamesTheBytesAndTheDevice() {
        let device = IsolatedBackend(index: 2)
        device.capacityBytes = 1 << 20
        XCTAssertThrowsError(try Tensor(uninitialized: [1024, 1024], on: device)) { e in
            XCTAssertEqual("\(e)", "backend: cannot allocate 4194304 bytes (4.0 MiB) on isolated:2: 0 of 1048576 bytes in use")
        }
        XCTAssertThrowsError(try Tensor.zeros([2, 1024, 1024], on: device))
    }

    func testScopedDefaultBackendPlacesTensorsMadeWithoutOn() throws {
        let device = IsolatedBackend(index: 3)
        let (inside, values) = try withDefaultBackend(device) { () -> (Device, [Float]) in
            let t = try Tensor.ones([2]).add(Tensor([1, 2], shape: [2]))
            return (t.device, t.floats)
        }
        XCTAssertEqual(inside, .isolated(3))
        XCTAssertEqual(values, [2, 3])
        XCTAssertEqual(try Tensor.zeros([1]).device, .cpu, "outside the scope the default is the CPU again")
    }

    func testMovingAParameterKeepsItsIdentityAndGradient() throws {
        let device = IsolatedBackend(index: 4)
        let w = Tensor([1, 2], shape: [2])
        w.requiresGrad = true
        try w.mul(w).sum().backward()
        let id = ObjectIdentifier(w)
        try w.move(to: device)
        XCTAssertEqual(ObjectIdentifier(w), id)
        XCTAssertEqual(w.device, .isolated(4))
        XCTAssertEqual(w.grad?.device, .isolated(4))
        XCTAssertEqual(w.grad?.floats, [2, 4])
        XCTAssertEqual(w.floats, [1, 2])
    }
}
