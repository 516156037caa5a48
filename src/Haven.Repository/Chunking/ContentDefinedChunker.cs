using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using Haven.Core;

namespace Haven.Repository.Chunking;

/// <summary>Chunk size bounds, persisted in the repository config.</summary>
public sealed record ChunkerParameters(int MinSize, int AverageSize, int MaxSize)
{
    /// <summary>
    /// 512 KiB / 1 MiB / 8 MiB. Large enough that per-chunk costs (index entry, HMAC key setup, one encryption, one
    /// pack header entry) stay below 1 % of the byte work; small enough that a local edit re-stores about 1 MiB.
    /// docs/benchmarks.md records the chunking measurement behind it.
    /// </summary>
    public static ChunkerParameters Default { get; } = new(512 * 1024, 1024 * 1024, 8 * 1024 * 1024);

    public void Validate()
    {
        if (MinSize < 64 || AverageSize <= MinSize || MaxSize <= AverageSize || MaxSize > 64 * 1024 * 1024 || !BitOperations.IsPow2(AverageSize))
        {
            throw new HavenException(ErrorCode.UnsupportedFormat, $"chunker sizes {MinSize}/{AverageSize}/{MaxSize} are invalid (need 64 <= min < avg < max <= 64 MiB, avg a power of two)");
        }
    }
}

/// <summary>
/// FastCDC-style content-defined chunking with normalised chunk sizes (Xia et al., USENIX ATC 2016), keyed: the gear
/// table is derived from the repository's chunker key, so cut points depend on a secret and do not fingerprint
/// known content. A pure function of its input: <see cref="FindCut"/> looks only at the bytes it is given.
/// </summary>
public sealed class ContentDefinedChunker
{
    /// <summary>Bytes that influence the rolling hash: the top bit of a left-shifting gear hash sees the last 64 bytes.</summary>
    private const int Window = 64;

    private readonly ulong[] _gear;
    private readonly ulong _maskSmall;
    private readonly ulong _maskLarge;

    public ContentDefinedChunker(ReadOnlySpan<byte> chunkerKey, ChunkerParameters parameters)
    {
        parameters.Validate();
        Parameters = parameters;
        _gear = DeriveGearTable(chunkerKey);
        int bits = BitOperations.Log2((uint)parameters.AverageSize);
        // Normalisation level 2: two more bits (harder to cut) before the average size, two fewer after.
        // Masks take the top bits of the hash, which depend on the whole 64-byte window.
        _maskSmall = TopBits(bits + 2);
        _maskLarge = TopBits(bits - 2);
    }

    public ChunkerParameters Parameters { get; }

    private static ulong TopBits(int count) => count <= 0 ? 0 : ~0UL << (64 - count);

    /// <summary>The gear table: 256 words from HMAC-SHA256(chunkerKey, "haven gear" ‖ i), i = 0..63, 4 words each.</summary>
    public static ulong[] DeriveGearTable(ReadOnlySpan<byte> chunkerKey)
    {
        var table = new ulong[256];
        Span<byte> input = stackalloc byte[11];
        "haven gear"u8.CopyTo(input);
        Span<byte> mac = stackalloc byte[32];
        for (int i = 0; i < 64; i++)
        {
            input[10] = (byte)i;
            HMACSHA256.HashData(chunkerKey, input, mac);
            for (int j = 0; j < 4; j++)
            {
                table[(i * 4) + j] = BinaryPrimitives.ReadUInt64LittleEndian(mac[(j * 8)..]);
            }
        }

        return table;
    }

    /// <summary>
    /// Returns the length of the chunk that starts at <paramref name="data"/>[0], or -1 when the decision needs more
    /// bytes. <paramref name="isFinal"/> says that no bytes follow <paramref name="data"/>; then the result is never -1
    /// (an empty input gives 0).
    /// </summary>
    public int FindCut(ReadOnlySpan<byte> data, bool isFinal)
    {
        int min = Parameters.MinSize;
        int max = Parameters.MaxSize;
        int n = data.Length;
        if (n <= min)
        {
            return isFinal ? n : -1;
        }

        int limit = Math.Min(n, max);
        int normal = Math.Min(Parameters.AverageSize, limit);
        int cut = Scan(data, min - Window, min, normal, limit);
        if (cut >= 0)
        {
            return cut;
        }

        if (limit == max)
        {
            return max;
        }

        return isFinal ? n : -1;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Scan(ReadOnlySpan<byte> data, int start, int min, int normal, int limit)
    {
        ref ulong gear = ref _gear[0];
        ulong h = 0;
        int i = start;
        for (; i < min; i++)
        {
            h = (h << 1) + Unsafe.Add(ref gear, data[i]);
        }

        ulong mask = _maskSmall;
        for (; i < normal; i++)
        {
            h = (h << 1) + Unsafe.Add(ref gear, data[i]);
            if ((h & mask) == 0)
            {
                return i + 1;
            }
        }

        mask = _maskLarge;
        for (; i < limit; i++)
        {
            h = (h << 1) + Unsafe.Add(ref gear, data[i]);
            if ((h & mask) == 0)
            {
                return i + 1;
            }
        }

        return -1;
    }
}
