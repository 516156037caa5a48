using BenchmarkDotNet.Attributes;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Benchmarks;

/// <summary>
/// A 1000-entry directory: 896 regular files (one to three content ids, owner names, times, inode), 84
/// subdirectories and 20 symlinks, sorted by name as the archiver writes them. Encode is what every backup pays for
/// every changed directory; decode is what restore, diff and unchanged-file detection pay.
/// </summary>
[MemoryDiagnoser]
public class TreeCodecBenchmarks
{
    private const int Entries = 1000;

    private List<Node> _nodes = null!;
    private byte[] _encoded = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(7);
        _nodes = new List<Node>(Entries);
        const long baseTime = 1_790_000_000_000_000_000;
        for (int i = 0; i < Entries; i++)
        {
            var type = i % 50 == 0 ? FileType.Symlink : i % 12 == 1 ? FileType.Directory : FileType.Regular;
            var name = System.Text.Encoding.ASCII.GetBytes($"entry-{i:D4}{(type == FileType.Regular ? ".so.6" : string.Empty)}");
            long size = type == FileType.Regular ? rng.NextInt64(1, 3L * BenchData.MiB) : 0;
            _nodes.Add(new Node
            {
                Name = name,
                Type = type,
                Mode = type == FileType.Directory ? Convert.ToUInt32("755", 8) : Convert.ToUInt32("644", 8),
                Uid = 1000,
                Gid = 1000,
                User = "haven",
                Group = "haven",
                Size = size,
                ModifyTimeNs = baseTime + rng.NextInt64(1_000_000_000_000_000),
                AccessTimeNs = baseTime + rng.NextInt64(1_000_000_000_000_000),
                ChangeTimeNs = baseTime + rng.NextInt64(1_000_000_000_000_000),
                Inode = (ulong)rng.NextInt64(1, 1L << 40),
                DeviceId = 2049,
                Links = 1,
                Content = type == FileType.Regular ? RandomIds(rng, 1 + (int)(size / (BenchData.MiB + 1))) : null,
                Subtree = type == FileType.Directory ? RandomIds(rng, 1)[0] : null,
                LinkTarget = type == FileType.Symlink ? "../lib/x86_64-linux-gnu/libc.so.6"u8.ToArray() : null,
            });
        }

        _encoded = TreeCodec.Encode(_nodes);
        Console.WriteLine($"// tree: {Entries} entries -> {_encoded.Length} bytes");
    }

    private static ObjectId[] RandomIds(Random rng, int count)
    {
        var ids = new ObjectId[count];
        Span<byte> bytes = stackalloc byte[ObjectId.Size];
        for (int i = 0; i < count; i++)
        {
            rng.NextBytes(bytes);
            ids[i] = new ObjectId(bytes);
        }

        return ids;
    }

    [Benchmark]
    public byte[] Encode() => TreeCodec.Encode(_nodes);

    [Benchmark]
    public List<Node> Decode() => TreeCodec.Decode(_encoded);
}
