import Foundation
import XCTest
import LoomCore
import LoomData

final class DataTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "loom-data-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ name: String, _ text: String) -> String {
        let p = dir + "/" + name
        FileManager.default.createFile(atPath: p, contents: text.data(using: .utf8))
        return p
    }

    func testCSVLabelInLastColumnWithHeader() throws {
        let p = write("d.csv", "p1,p2,p3,label\n0,255,0,7\n255,0,0,3\n")
        let d = try MNIST.loadCSV(p, features: 3)
        XCTAssertEqual(d.labels, [7, 3])
        XCTAssertEqual(d.pixels[1], (1 - MNIST.mean) / MNIST.std, accuracy: 1e-6)
        XCTAssertEqual(d.pixels[0], (0 - MNIST.mean) / MNIST.std, accuracy: 1e-6, "the header's digits leaked into the first pixel")
    }

    func testGzippedCSVReadsTheSame() throws {
        let p = write("g.csv", "1,2,3,4\n5,6,7,8\n")
        let gz = Process()
        gz.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gz.arguments = ["-k", p]
        try gz.run(); gz.waitUntilExit()
        XCTAssertEqual(try MNIST.loadCSV(p + ".gz", features: 3).pixels, try MNIST.loadCSV(p, features: 3).pixels)
    }

    func testMalformedCSVNamesFileAndLine() {
        let p = write("bad.csv", "1,2,3,4\n1,2\n")
        XCTAssertThrowsError(try MNIST.loadCSV(p, features: 3)) { e in
            XCTAssertEqual("\(e)", "'\(p)' line 2: expected 4 values (3 pixels + label), got 2")
        }
        let q = write("word.csv", "1,2,3,4\n1,x,3,4\n")
        XCTAssertThrowsError(try MNIST.loadCSV(q, features: 3)) { e in XCTAssertTrue("\(e)".contains("line 2")) }
        XCTAssertThrowsError(try MNIST.loadCSV(dir + "/missing.csv")) { e in
            XCTAssertTrue("\(e)".contains("cannot open '\(self.dir!)/missing.csv'"))
        }
    }

    func testIDXRoundTrip() throws {
        var img: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2] + [0, 255, 255, 0, 1, 2, 3, 4]
        let lab: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 2, 5, 9]
        let ip = dir + "/i.idx", lp = dir + "/l.idx"
        FileManager.default.createFile(atPath: ip, contents: Data(img))
        FileManager.default.createFile(atPath: lp, contents: Data(lab))
        let d = try MNIST.loadIDX(images: ip, labels: lp)
        XCTAssertEqual(d.labels, [5, 9]); XCTAssertEqual(d.features, 4)
        img.removeLast()
        FileManager.default.createFile(atPath: ip, contents: Data(img))
        XCTAssertThrowsError(try MNIST.loadIDX(images: ip, labels: lp)) { e in XCTAssertTrue("\(e)".contains("header says 2 images")) }
    }

    func testOutOfRangeValuesAndOverflowingHeadersAreRefusedNotTrapped() throws {
        let pixels = (0..<784).map { _ in "0" }
        func csv(_ fields: [String]) throws -> String {
            let path = dir + "/r.csv"
            try (fields.joined(separator: ",") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            do { _ = try MNIST.loadCSV(path); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertEqual(try csv(pixels + ["3"]), "accepted")
        XCTAssertTrue(try csv(["300"] + pixels.dropFirst() + ["3"]).contains("line 1: pixel 1 is 300, outside 0...255"))
        XCTAssertTrue(try csv(pixels.dropLast() + ["1234567890123456789012"] + ["3"]).contains("pixel 784 is a 22-digit number"))
        XCTAssertTrue(try csv(pixels + ["99999999999999999999"]).contains("outside 0..<10"))
        // An IDX header whose n x rows x cols overflows 64 bits.
        let img: [UInt8] = [0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255] + [1, 2]
        let ip = dir + "/huge.idx", lp = dir + "/l.idx"
        FileManager.default.createFile(atPath: ip, contents: Data(img))
        FileManager.default.createFile(atPath: lp, contents: Data([0, 0, 8, 1, 0, 0, 0, 1, 0]))
        XCTAssertThrowsError(try MNIST.loadIDX(images: ip, labels: lp)) { e in XCTAssertTrue("\(e)".contains("more than 2^63 bytes"), "\(e)") }
    }

    func testTokenizerRoundTripAndUnknownCharacter() throws {
        let t = CharTokenizer(fitting: "hello world")
        XCTAssertEqual(t.decode(try t.encode("low")), "low")
        XCTAssertEqual(t.count, 8)
        XCTAssertThrowsError(try t.encode("z"))
        let (tokens, unseen) = t.encodeLeniently("low_z")
        XCTAssertEqual(unseen, 2)
        XCTAssertEqual(t.decode(tokens), "low  ", "unseen characters read as a space")
        XCTAssertEqual(CharTokenizer(vocabulary: Array(t.serialized)), t)
    }

    func testSamplerShardsAreDisjointAndCoverTheGlobalBatch() throws {
        let one = try EpochSampler(count: 100, globalBatch: 8, seed: 3)
        let shards = try (0..<4).map { try EpochSampler(count: 100, globalBatch: 8, seed: 3, rank: $0, worldSize: 4) }
        for step in [0, 5, 12, 13, 30] {
            let whole = one.indices(step: step)
            let parts = shards.flatMap { $0.indices(step: step) }
            XCTAssertEqual(parts, whole)
            XCTAssertEqual(Set(whole).count, 8)
        }
        XCTAssertNotEqual(one.order(epoch: 0), one.order(epoch: 1), "a fresh shuffle each epoch")
        XCTAssertThrowsError(try EpochSampler(count: 100, globalBatch: 6, seed: 1, rank: 0, worldSize: 4))
    }

    func testPrefetchLoaderKeepsSamplerOrder() throws {
        let d = TokenWindows(tokens: (0..<401).map(Int32.init), context: 4)
        let s = try EpochSampler(count: d.count, globalBatch: 5, seed: 1)
        let loader = PrefetchLoader(dataset: d, sampler: s, start: 3, end: 40, prefetch: 3)
        for step in 3..<40 {
            let b = try XCTUnwrap(loader.next())
            XCTAssertEqual(b.inputs.ints, d.batch(s.indices(step: step)).inputs.ints)
            XCTAssertEqual(b.targets.ints.first, b.inputs.ints.first! + 1)
        }
        XCTAssertNil(loader.next())
    }
}
