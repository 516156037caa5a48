using BenchmarkDotNet.Attributes;
using Haven.Repository.Native;

namespace Haven.Benchmarks;

/// <summary>
/// zstd through libzstd on 1 MiB chunks: levels 1 and 3 (3 is the repository default), random and text-like input.
/// Decompression reads the frame that the same level produced. Random input at these levels mostly becomes raw
/// blocks, which is why <c>BlobCodec</c> probes before compressing.
/// </summary>
[MemoryDiagnoser]
public class ZstdBenchmarks
{
    private byte[] _input = null!;
    private byte[] _scratch = null!;
    private byte[] _frame = null!;
    private byte[] _output = null!;

    [Params(1, 3)]
    public int Level { get; set; }

    [Params(ChunkKind.Random, ChunkKind.Text)]
    public ChunkKind Kind { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _input = BenchData.Chunk(Kind);
        _scratch = new byte[Zstd.CompressBound(_input.Length)];
        int length = Zstd.Compress(_input, _scratch, Level);
        _frame = _scratch.AsSpan(0, length).ToArray();
        _output = new byte[_input.Length];
        Console.WriteLine($"// zstd {Level} on {Kind}: {_input.Length} -> {length} bytes ({(double)_input.Length / length:F2}x)");
    }

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public int Compress() => Zstd.Compress(_input, _scratch, Level);

    [Benchmark]
    [ProcessesBytes(BenchData.ChunkSize)]
    public bool Decompress() => Zstd.TryDecompress(_frame, _output);
}
