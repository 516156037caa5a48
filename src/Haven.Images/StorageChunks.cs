using System.Buffers.Binary;
using System.IO.Hashing;
using System.Security.Cryptography;
using System.Text;

namespace Haven.Images;

/// <summary>
/// Where storage chunks are cut (docs/design/repository-format.md, "block map format 2"): within a run of data
/// blocks, after a 4 KiB unit once the chunk holds at least <see cref="MinUnits"/> units and the unit's keyed hash has
/// its low bits zero, or when it holds <see cref="MaxUnits"/>. The same bytes at another offset are cut the same way
/// once one cut falls inside them, so a file's copies deduplicate wherever the filesystem put them.
/// </summary>
public sealed class StorageChunks
{
    public const int MinUnits = 16;
    public const int MaxUnits = 256;
    public const int MaxBytes = MaxUnits * BlockMap.Unit;
    private const ulong CutMask = 63;

    private readonly long _seed;

    /// <summary>The hash is seeded from the repository's chunker key, so chunk lengths say nothing about content.</summary>
    public StorageChunks(byte[] chunkerKey)
    {
        var derived = HMACSHA256.HashData(chunkerKey, Encoding.ASCII.GetBytes("haven image units v1"));
        _seed = BinaryPrimitives.ReadInt64LittleEndian(derived);
    }

    /// <summary>Whether a chunk that ends with <paramref name="unit"/>, its <paramref name="units"/>-th unit, is cut there.</summary>
    public bool CutsAfter(ReadOnlySpan<byte> unit, int units) =>
        units >= MaxUnits || (units >= MinUnits && (XxHash3.HashToUInt64(unit, _seed) & CutMask) == 0);
}
