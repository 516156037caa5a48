using BenchmarkDotNet.Attributes;
using Haven.Core;
using Haven.Repository.Crypto;

namespace Haven.Benchmarks;

/// <summary>Blob ids: HMAC-SHA256 with the repository's id key over a 1 MiB chunk (the mean chunk size).</summary>
[MemoryDiagnoser]
public class BlobIdBenchmarks
{
    private MasterKey _key = null!;
    private byte[] _chunk = null!;

    [GlobalSetup]
    public void Setup()
    {
        _key = BenchData.Key;
        _chunk = BenchData.Chunk(ChunkKind.Random);
    }

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public ObjectId BlobId() => _key.BlobId(_chunk);
}
