import Foundation
import XCTest
import LoomCore
import LoomData

/// Image datasets from the formats people have: CIFAR binary, NumPy .npy/.npz and PNG
/// folders (fixtures by scripts/gen_image_fixtures.py), each with its bad-file error.
final class ImageFilesTests: XCTestCase {
    var fixtures: String { Bundle.module.url(forResource: "images", withExtension: nil, subdirectory: "Fixtures")!.path }
    var work: String!

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "loom-images-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: work) }

    func expected() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixtures + "/expected.json"))) as! [String: Any]
    }

    func assertError(_ body: @autoclosure () throws -> Any, contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "\(error)", file: file, line: line)
            XCTAssertFalse("\(error)".contains("\n"), "one line: \(error)", file: file, line: line)
        }
    }

    func testCIFAR10And100BinaryBatchesLoadWithTheirLabelsAndChannelPlanes() throws {
        // Two CIFAR-10 records: label, then 1024 red, 1024 green, 1024 blue bytes.
        var ten: [UInt8] = []
        for (label, base) in [(7, 0), (2, 100)] { ten.append(UInt8(label)); ten += (0..<3072).map { UInt8((base + $0) % 256) } }
        try Data(ten).write(to: URL(fileURLWithPath: work + "/data_batch_1.bin"))
        try Data(ten.reversed().reversed()).write(to: URL(fileURLWithPath: work + "/data_batch_2.bin"))
        let d = try ImageFiles.loadCIFAR(work)
        XCTAssertEqual(d.shape, [3, 32, 32]); XCTAssertEqual(d.classes, 10)
        XCTAssertEqual(d.labels, [7, 2, 7, 2])
        XCTAssertEqual(d.pixels[1024], Float(1024 % 256) / 255, "the green plane starts at 1024")
        XCTAssertEqual(d.pixels[3072], Float(100) / 255)
        // CIFAR-100: coarse and fine label bytes; the fine one counts.
        let dir = work + "/c100"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data([3, 88] + [UInt8](repeating: 9, count: 3072)).write(to: URL(fileURLWithPath: dir + "/train.bin"))
        let h = try ImageFiles.loadCIFAR(dir)
        XCTAssertEqual(h.labels, [88]); XCTAssertEqual(h.classes, 100)

        try Data(ten.prefix(5000)).write(to: URL(fileURLWithPath: work + "/data_batch_3.bin"))
        assertError(try ImageFiles.loadCIFAR(self.work), contains: "data_batch_3.bin': 5000 bytes is not a whole number of CIFAR-10 records of 3073 bytes")
        assertError(try ImageFiles.loadCIFAR(self.work + "/nowhere"), contains: "nowhere")
    }

    func testNumPyArraysLoadFromNpzAndNpyInEitherChannelOrder() throws {
        let e = try expected()
        let x = (e["x_nchw"] as! [Int]).map { Float($0) / 255 }, y = (e["y"] as! [Int]).map(Int32.init)
        for d in [try ImageFiles.loadNumPy(fixtures + "/images.npz"), try ImageFiles.loadNumPy(fixtures + "/x.npy", labels: fixtures + "/y.npy")] {
            XCTAssertEqual(d.shape, [3, 5, 4], "channels-last uint8 images become [C, H, W]")
            XCTAssertEqual(d.pixels, x)
            XCTAssertEqual(d.labels, y)
            XCTAssertEqual(d.classes, 3)
        }
        let f = try ImageFiles.loadNumPy(fixtures + "/images_compressed.npz")  // deflated; float32 [N, C, H, W]
        XCTAssertEqual(f.shape, [3, 5, 4])
        XCTAssertEqual(f.pixels, (e["f"] as! [Double]).map(Float.init))
        XCTAssertEqual(f.labels, (e["labels"] as! [Int]).map(Int32.init))

        assertError(try ImageFiles.loadNumPy(self.fixtures + "/x.npy"), contains: "needs data.labels")
        assertError(try ImageFiles.loadNumPy(self.fixtures + "/y.npy", labels: self.fixtures + "/y.npy"), contains: "images [6] for 6 labels")
        assertError(try ImageFiles.loadNumPy(self.fixtures + "/x.npy", labels: self.fixtures + "/x.npy"), contains: "labels must be a 1-D integer array")
        let truncated = Array(try Data(contentsOf: URL(fileURLWithPath: fixtures + "/x.npy")).prefix(300))
        assertError(try ImageFiles.readNPY(truncated, path: "cut.npy"), contains: "'cut.npy': shape [6, 5, 4, 3] of |u1 needs 360 bytes, the file has")
        assertError(try ImageFiles.readNPY(Array("not numpy at all".utf8), path: "text.npy"), contains: "not a .npy file")
        try Data("PK junk".utf8).write(to: URL(fileURLWithPath: work + "/bad.npz"))
        assertError(try ImageFiles.loadNumPy(self.work + "/bad.npz"), contains: "bad.npz': not an .npz (zip) file")
    }

    func testAFolderOfClassFoldersOfPNGsLoadsInSortedClassOrder() throws {
        let e = try expected()["png"] as! [String: [Int]]
        let (d, names) = try ImageFiles.loadPNGFolder(fixtures + "/png")
        XCTAssertEqual(names, ["cat", "dog"])
        XCTAssertEqual(d.shape, [3, 5, 4])
        XCTAssertEqual(d.labels, [0, 0, 0, 1, 1, 1])
        let want = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"].flatMap { e[$0]!.map { Float($0) / 255 } }
        XCTAssertEqual(d.pixels, want)

        let bad = work + "/bad/a"
        try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
        try Data("not a png".utf8).write(to: URL(fileURLWithPath: bad + "/x.png"))
        assertError(try ImageFiles.loadPNGFolder(self.work + "/bad"), contains: "bad/a/x.png': not a readable PNG")
        try FileManager.default.removeItem(atPath: bad + "/x.png")
        try FileManager.default.copyItem(atPath: fixtures + "/png/cat/0.png", toPath: bad + "/0.png")
        try FileManager.default.createDirectory(atPath: work + "/bad/b", withIntermediateDirectories: true)
        try Data(makeGreyPNG(width: 2, height: 2)).write(to: URL(fileURLWithPath: work + "/bad/b/1.png"))
        assertError(try ImageFiles.loadPNGFolder(self.work + "/bad"), contains: "images must share a size")
        assertError(try ImageFiles.loadPNGFolder(self.work), contains: "no .png files")
    }

    /// libpng reads through the pointer it was given at begin_read again in finish_read:
    /// the file's bytes must outlive both calls. An 8x8 grey image (libpng's simplified API
    /// and PIL read it) was refused as "corrupt PNG (IDAT: unknown compression method)"
    /// when they did not; read many times over, with allocations between, it must give
    /// its pixels every time.
    func testAValidGreyPNGReadsWithItsPixelsEveryTime() throws {
        let dir = work + "/grey/a"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(makeGreyPNG(width: 8, height: 8)).write(to: URL(fileURLWithPath: dir + "/0.png"))
        for _ in 0..<200 {
            let (d, _) = try ImageFiles.loadPNGFolder(work + "/grey")
            XCTAssertEqual(d.shape, [1, 8, 8])
            XCTAssertEqual(d.pixels, [Float](repeating: Float(128) / 255, count: 64))
            _ = [UInt8](repeating: 0xAB, count: 1 << 12)  // reuse the freed block, if it was freed
        }
    }

    /// A `.npy` made by hand: the header for `descr` and `shape`, then `body`.
    func npy(_ descr: String, _ shape: String, _ body: [UInt8]) -> [UInt8] {
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shape), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let n = header.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(n & 255), UInt8(n >> 8)] + Array(header.utf8) + body
    }

    /// Labels that no classifier could have (negative, or past any class count) and dtypes
    /// Loom does not read are errors naming the file and the value, not traps.
    func testOutOfRangeLabelsAndUnreadDtypesAreErrorsNamingTheFile() throws {
        let images = fixtures + "/x.npy", labels = work + "/y.npy"
        func int64s(_ v: [Int64]) -> [UInt8] { v.flatMap { x in withUnsafeBytes(of: x.littleEndian) { Array($0) } } }
        try Data(npy("<i8", "(6,)", int64s([1, 1 << 40, 0, 1, 1, 0]))).write(to: URL(fileURLWithPath: labels))
        assertError(try ImageFiles.loadNumPy(images, labels: labels), contains: "y.npy': label 1099511627776 (example 1) is outside 0..<1048576")
        try Data(npy("|i1", "(6,)", [1, 0xFB, 0, 1, 1, 0])).write(to: URL(fileURLWithPath: labels))
        assertError(try ImageFiles.loadNumPy(images, labels: labels), contains: "y.npy': label -5 (example 1) is outside")
        assertError(try ImageFiles.readNPY(npy("|O", "(3,)", [0x80, 0x04]), path: "o.npy"),
                    contains: "'o.npy': dtype |O holds Python objects (pickled), which Loom does not read")
        assertError(try ImageFiles.readNPY(npy(">i4", "(1,)", [0, 0, 0, 1]), path: "be.npy"), contains: "big-endian dtype >i4 is not read")
        assertError(try ImageFiles.readNPY(npy("|u1", "(6, 5, -3)", []), path: "neg.npy"), contains: "'neg.npy': shape (6, 5, -3) has -3, not a size")
        assertError(try ImageFiles.readNPY(npy("|u1", "(4294967296, 4294967296, 4294967296)", []), path: "huge.npy"),
                    contains: "'huge.npy': shape [4294967296, 4294967296, 4294967296] of |u1 has more elements than any file holds")
    }

    /// A tiny 8-bit grey PNG, made by hand (zlib through Foundation is not at hand: stored deflate blocks).
    func makeGreyPNG(width: Int, height: Int) -> [UInt8] {
        func be32(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        func crc(_ bytes: [UInt8]) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes { c ^= UInt32(b); for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 } }
            return ~c
        }
        func chunk(_ kind: String, _ data: [UInt8]) -> [UInt8] { be32(data.count) + Array(kind.utf8) + data + be32(Int(crc(Array(kind.utf8) + data))) }
        let raw = (0..<height).flatMap { _ in [UInt8(0)] + [UInt8](repeating: 128, count: width) }
        var adler: (UInt32, UInt32) = (1, 0)
        for b in raw { adler.0 = (adler.0 + UInt32(b)) % 65521; adler.1 = (adler.1 + adler.0) % 65521 }
        let n = raw.count
        let zlib = [0x78, 0x01, 0x01, UInt8(n & 255), UInt8(n >> 8), UInt8(~n & 255), UInt8((~n >> 8) & 255)] + raw + be32(Int(adler.1 << 16 | adler.0))
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", be32(width) + be32(height) + [8, 0, 0, 0, 0])
            + chunk("IDAT", zlib) + chunk("IEND", [])
    }
}
