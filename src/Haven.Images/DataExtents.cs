using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// Where a sparse file holds data (lseek SEEK_DATA/SEEK_HOLE), so the holes between are neither read nor stored.
/// A filesystem that does not track holes reports the whole file as data, which is merely slower.
/// </summary>
public sealed class DataExtents
{
    private readonly List<(long Start, long End)> _extents;

    private DataExtents(List<(long Start, long End)> extents) => _extents = extents;

    public static DataExtents Of(SafeFileHandle file, long size)
    {
        var extents = new List<(long, long)>();
        long at = 0;
        while (at < size)
        {
            long data = Posix.SeekData(file, at);
            if (data < 0 || data >= size)
            {
                break;
            }

            long hole = Posix.SeekHole(file, data);
            long end = hole < 0 ? size : Math.Min(hole, size);
            extents.Add((data, end));
            at = end;
        }

        return new DataExtents(extents);
    }

    /// <summary>Whether any byte of [offset, offset + length) holds data.</summary>
    public bool HasData(long offset, long length)
    {
        int at = FirstEndingAfter(_extents, offset);
        return at < _extents.Count && _extents[at].Start < offset + length;
    }

    /// <summary>The index of the first of <paramref name="ranges"/> (sorted, disjoint) that ends after <paramref name="offset"/>.</summary>
    internal static int FirstEndingAfter(List<(long Start, long End)> ranges, long offset)
    {
        int lo = 0, hi = ranges.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) / 2;
            if (ranges[mid].End <= offset)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }

    public long DataBytes => _extents.Sum(e => e.End - e.Start);
}
