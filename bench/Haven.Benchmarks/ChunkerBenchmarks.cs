using BenchmarkDotNet.Attributes;
using Haven.Repository.Chunking;

namespace Haven.Benchmarks;

/// <summary>
/// Content-defined chunking with the default sizes (512 KiB / 1 MiB / 8 MiB) over the 16 MiB mixed buffer, cut by
/// cut, as the archiver does with a whole file in memory. The throughput counts every byte of the buffer, including
/// the first 512 KiB - 64 of each chunk that the chunker skips without hashing: that is the rate users get.
/// </summary>
[MemoryDiagnoser]
public class ChunkerBenchmarks
{
    private ContentDefinedChunker _chunker = null!;
    private byte[] _data = null!;

    [GlobalSetup]
    public void Setup()
    {
        _chunker = new ContentDefinedChunker(BenchData.Key.ChunkerKey, ChunkerParameters.Default);
        _data = BenchData.Mixed;
        Console.WriteLine($"// chunker: {FindCuts()} chunks in {_data.Length} bytes");
    }

    /// <summary>Returns the number of chunks, so the work cannot be optimised away.</summary>
    [Benchmark]
    [ProcessesBytes(BenchData.MixedSize)]
    public int FindCuts()
    {
        ReadOnlySpan<byte> rest = _data;
        int chunks = 0;
        while (!rest.IsEmpty)
        {
            rest = rest[_chunker.FindCut(rest, isFinal: true)..];
            chunks++;
        }

        return chunks;
    }
}
