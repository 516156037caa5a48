using System.Buffers;
using BenchmarkDotNet.Attributes;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Packs;

namespace Haven.Benchmarks;

/// <summary>
/// One full pack as <c>BlobWriter</c> makes it: a new builder with the capacity it asks for (pack size + 1 MiB), 16
/// encoded 1 MiB random blobs (incompressible, so the pack reaches the default 16 MiB), then <c>Finish</c>, which
/// seals the header and names the pack by the SHA-256 of its bytes. Encoding is done once in setup.
/// </summary>
[MemoryDiagnoser]
public class PackBuilderBenchmarks
{
    private const int Blobs = 16;

    private Aead _aead = null!;
    private (ObjectId Id, BlobFlags Flags, byte[] Stored)[] _encoded = null!;

    [GlobalSetup]
    public void Setup()
    {
        _aead = new Aead(BenchData.Key.EncryptionKey);
        var codec = new BlobCodec(_aead, 3);
        var mixed = BenchData.Mixed;
        _encoded = new (ObjectId, BlobFlags, byte[])[Blobs];
        var scratch = new EncodeScratch();
        for (int i = 0; i < Blobs; i++)
        {
            // 8 random chunks from the buffer, then the same 8 with one byte changed so the ids differ
            var plaintext = mixed.AsSpan((i % 8) * BenchData.ChunkSize, BenchData.ChunkSize).ToArray();
            plaintext[0] ^= (byte)(i / 8);
            var id = BenchData.Key.BlobId(plaintext);
            var (buffer, length, flags) = codec.Encode(BlobType.Data, id, plaintext, scratch);
            _encoded[i] = (id, flags, buffer.AsSpan(0, length).ToArray());
        }
    }

    [Benchmark]
    [ProcessesBytes(Blobs * BenchData.ChunkSize)]
    public ObjectId AddAndFinish()
    {
        var builder = new PackBuilder(_aead, RepositoryConfig.DefaultPackSize + BenchData.MiB);
        foreach (var (id, flags, stored) in _encoded)
        {
            builder.Add(id, BlobType.Data, flags, stored, BenchData.ChunkSize);
        }

        return builder.Finish().Name;
    }
}
