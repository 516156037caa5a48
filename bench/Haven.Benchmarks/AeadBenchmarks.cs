using BenchmarkDotNet.Attributes;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Packs;

namespace Haven.Benchmarks;

/// <summary>AES-256-GCM as blobs use it: 1 MiB of plaintext, associated data <c>type ‖ id</c>, random nonce.</summary>
[MemoryDiagnoser]
public class AeadBenchmarks
{
    private Aead _aead = null!;
    private byte[] _plaintext = null!;
    private byte[] _associatedData = null!;
    private byte[] _sealed = null!;
    private byte[] _scratchSealed = null!;
    private byte[] _opened = null!;

    [GlobalSetup]
    public void Setup()
    {
        _aead = new Aead(BenchData.Key.EncryptionKey);
        _plaintext = BenchData.Chunk(ChunkKind.Random);
        _associatedData = new byte[1 + ObjectId.Size];
        PackFormat.BlobAssociatedData(BlobType.Data, BenchData.Key.BlobId(_plaintext), _associatedData);
        _sealed = _aead.Seal(_plaintext, _associatedData);
        _scratchSealed = new byte[_sealed.Length];
        _opened = new byte[_plaintext.Length];
    }

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public void Seal() => _aead.Seal(_plaintext, _associatedData, _scratchSealed);

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public bool TryOpen() => _aead.TryOpen(_sealed, _associatedData, _opened);
}
