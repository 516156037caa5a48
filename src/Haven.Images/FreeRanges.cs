using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// Byte ranges of a source that its filesystems do not use (see <see cref="Ext4FreeSpace"/>, <see cref="XfsFreeSpace"/>,
/// <see cref="NtfsFreeSpace"/> and <see cref="FatFreeSpace"/>): an ext2/3/4, XFS, NTFS or FAT filesystem at the start of the source, or in any partition of its
/// partition table. Blocks wholly inside are not read.
/// </summary>
public sealed class FreeRanges
{
    private readonly List<(long Start, long End)> _ranges;

    private FreeRanges(List<(long Start, long End)> ranges)
    {
        ranges.Sort();
        var merged = new List<(long Start, long End)>();
        foreach (var r in ranges)
        {
            if (merged.Count > 0 && merged[^1].End >= r.Start)
            {
                merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, r.End));
            }
            else
            {
                merged.Add(r);
            }
        }

        _ranges = merged;
    }

    /// <summary>Bytes known to be free.</summary>
    public long Bytes => _ranges.Sum(r => r.End - r.Start);

    /// <summary>Which filesystems were read, for messages ("ext4 at 0", "ext4 in partition 2").</summary>
    public IReadOnlyList<string> Filesystems { get; private init; } = [];

    /// <summary>No free range: every block is read.</summary>
    public static FreeRanges None => new([]);

    /// <summary>The free ranges of the filesystem at the start of <paramref name="source"/>, or else of those in its <paramref name="partitions"/>.</summary>
    public static FreeRanges Find(SafeFileHandle source, long size, IReadOnlyList<Partition> partitions)
    {
        var ranges = new List<(long, long)>();
        var found = new List<string>();
        if (Read(source, 0, size) is { } whole)
        {
            ranges.AddRange(whole.Free);
            found.Add($"{whole.Kind} filesystem");
        }
        else
        {
            foreach (var p in partitions.Where(p => p.Start + p.Length <= size))
            {
                if (Read(source, p.Start, p.Length) is { } inPartition)
                {
                    ranges.AddRange(inPartition.Free);
                    found.Add($"{inPartition.Kind} filesystem in partition {p.Number}");
                }
            }
        }

        return new FreeRanges(ranges) { Filesystems = found };
    }

    /// <summary>The free ranges of the filesystem at <paramref name="offset"/>, by the first reader that knows it.</summary>
    private static (List<(long Start, long End)> Free, string Kind)? Read(SafeFileHandle source, long offset, long length) =>
        Ext4FreeSpace.Read(source, offset, length) is { } ext ? (ext, "ext2/3/4")
        : XfsFreeSpace.Read(source, offset, length) is { } xfs ? (xfs, "XFS")
        : NtfsFreeSpace.Read(source, offset, length) is { } ntfs ? (ntfs, "NTFS")
        : FatFreeSpace.Read(source, offset, length);

    /// <summary>Whether every byte of [offset, offset + length) is free.</summary>
    public bool Covers(long offset, long length)
    {
        int at = DataExtents.FirstEndingAfter(_ranges, offset);
        return at < _ranges.Count && _ranges[at].Start <= offset && _ranges[at].End >= offset + length;
    }
}
