using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// Byte offsets of a source at which files of its filesystems begin or end (see <see cref="Ext4FileExtents"/>): an ext4
/// filesystem at the start of the source, or in any partition of its partition table. Storage chunks are also cut
/// there, so a file of at least <see cref="MinBytes"/> starts a chunk of its own and its copies elsewhere on the
/// disk, or on other disks, are stored once.
/// </summary>
public sealed class FileBoundaries
{
    /// <summary>Files (runs of their blocks) shorter than a minimum chunk are left to the content-defined cuts.</summary>
    public const long MinBytes = StorageChunks.MinUnits * BlockMap.Unit;

    private readonly long[] _offsets;

    private FileBoundaries(long[] offsets) => _offsets = offsets;

    /// <summary>How many offsets are known.</summary>
    public int Count => _offsets.Length;

    /// <summary>No offsets: chunks are cut by content alone.</summary>
    public static FileBoundaries None { get; } = new([]);

    /// <summary>The offsets of the filesystem at the start of <paramref name="source"/>, or else of those in its <paramref name="partitions"/>.</summary>
    public static FileBoundaries Find(SafeFileHandle source, long size, IReadOnlyList<Partition> partitions)
    {
        if (Ext4FileExtents.Read(source, 0, size, MinBytes) is { } whole)
        {
            return new FileBoundaries(whole);
        }

        var all = new List<long>();
        foreach (var p in partitions.Where(p => p.Start + p.Length <= size))
        {
            all.AddRange(Ext4FileExtents.Read(source, p.Start, p.Length, MinBytes) ?? []);
        }

        return new FileBoundaries(Ext4FileExtents.SortedDistinct(all));
    }

    /// <summary>Whether a file begins or ends at <paramref name="offset"/>.</summary>
    public bool At(long offset) => _offsets.Length > 0 && Array.BinarySearch(_offsets, offset) >= 0;
}
