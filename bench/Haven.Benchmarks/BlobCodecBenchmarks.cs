using System.Buffers;
using BenchmarkDotNet.Attributes;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Packs;

namespace Haven.Benchmarks;

/// <summary>
/// A data blob end to end as <c>BlobWriter</c> stores it and the restorer reads it: the incompressibility probe,
/// zstd at the repository default (level 3) when the probe says so, and AES-256-GCM; decoding reverses it. Random
/// chunks show the cost of the probe alone, text chunks the cost of compression.
/// </summary>
[MemoryDiagnoser]
public class BlobCodecBenchmarks
{
    private BlobCodec _codec = null!;
    private readonly EncodeScratch _scratch = new();
    private byte[] _plaintext = null!;
    private ObjectId _id;
    private PackedBlob _blob;
    private byte[] _stored = null!;
    private byte[] _decoded = null!;

    /// <summary>The level <c>haven init</c> writes into a new repository's config.</summary>
    private const int DefaultLevel = 3;

    [Params(ChunkKind.Random, ChunkKind.Text)]
    public ChunkKind Kind { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _codec = new BlobCodec(new Aead(BenchData.Key.EncryptionKey), DefaultLevel);
        _plaintext = BenchData.Chunk(Kind);
        _id = BenchData.Key.BlobId(_plaintext);
        var (buffer, length, flags) = _codec.Encode(BlobType.Data, _id, _plaintext, _scratch);
        _stored = buffer.AsSpan(0, length).ToArray();
        _blob = new PackedBlob(_id, BlobType.Data, flags, 0, _stored.Length, _plaintext.Length);
        _decoded = new byte[_plaintext.Length];
        Console.WriteLine($"// codec on {Kind}: {_plaintext.Length} -> {_stored.Length} bytes, flags {flags}");
    }

    /// <summary>Reuses one scratch, as each <c>BlobWriter</c> caller does.</summary>
    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public int Encode()
    {
        var (_, length, _) = _codec.Encode(BlobType.Data, _id, _plaintext, _scratch);
        return length;
    }

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public bool Decode() => _codec.TryDecode(_blob, _stored, _decoded);
}
