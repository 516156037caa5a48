using System.Text;
using Haven.Repository.Crypto;

namespace Haven.Benchmarks;

/// <summary>What a 1 MiB chunk holds: random bytes (already-compressed or encrypted files) or text-like bytes.</summary>
public enum ChunkKind
{
    Random,
    Text,
}

/// <summary>
/// Inputs shared by every benchmark, generated once per benchmark process from fixed seeds so every run and every
/// machine measures the same bytes: <see cref="Mixed"/> is 16 MiB, the first half random bytes, the second half
/// text-like bytes (source-code-like lines of words drawn from a skewed vocabulary, with numbers and punctuation)
/// that zstd-1 compresses about as well as real source trees and man pages.
/// </summary>
public static class BenchData
{
    public const int MiB = 1024 * 1024;
    public const int MixedSize = 16 * MiB;
    public const int ChunkSize = MiB;

    private const int Seed = 20261122;

    private static readonly Lazy<byte[]> s_mixed = new(BuildMixed);

    /// <summary>16 MiB: <c>random (8 MiB) ‖ text (8 MiB)</c>. Callers must not modify it.</summary>
    public static byte[] Mixed => s_mixed.Value;

    /// <summary>A fresh copy of one 1 MiB chunk of the given kind.</summary>
    public static byte[] Chunk(ChunkKind kind, int index = 0)
    {
        int half = MixedSize / 2;
        if (index < 0 || (index + 1) * ChunkSize > half)
        {
            throw new ArgumentOutOfRangeException(nameof(index));
        }

        int offset = (kind == ChunkKind.Random ? 0 : half) + (index * ChunkSize);
        return Mixed.AsSpan(offset, ChunkSize).ToArray();
    }

    /// <summary>A master key with fixed bytes, so chunker cut points and blob ids are the same in every run.</summary>
    public static MasterKey Key { get; } = new(Fill(32, 1), Fill(32, 2), Fill(32, 3));

    private static byte[] Fill(int length, byte value)
    {
        var bytes = new byte[length];
        Array.Fill(bytes, value);
        return bytes;
    }

    private static byte[] BuildMixed()
    {
        var data = new byte[MixedSize];
        int half = MixedSize / 2;
        new Random(Seed).NextBytes(data.AsSpan(0, half));
        FillText(data.AsSpan(half), new Random(Seed + 1));
        return data;
    }

    /// <summary>Fills with lines like <c>    return frobnicate(alpha_12, quux);</c>: words from a 4096-word vocabulary,
    /// picked with a skew (a few words are frequent, most are rare), indented, with numbers and punctuation.</summary>
    private static void FillText(Span<byte> destination, Random rng)
    {
        const string letters = "etaoinshrdlcumwfgypbvkjxqz";
        var vocabulary = new string[4096];
        var sb = new StringBuilder();
        for (int i = 0; i < vocabulary.Length; i++)
        {
            sb.Clear();
            int length = 2 + rng.Next(10);
            for (int j = 0; j < length; j++)
            {
                // squaring skews towards the frequent letters, as in English
                double u = rng.NextDouble();
                sb.Append(letters[(int)(u * u * letters.Length)]);
            }

            vocabulary[i] = sb.ToString();
        }

        string[] separators = [" ", " ", " ", ", ", ".", "(", ")", " = ", ";", "_", " // ", ": "];
        int written = 0;
        var line = new StringBuilder();
        while (written < destination.Length)
        {
            line.Clear();
            line.Append(' ', 4 * rng.Next(4));
            int words = 3 + rng.Next(10);
            for (int w = 0; w < words; w++)
            {
                double u = rng.NextDouble();
                line.Append(vocabulary[(int)(u * u * u * vocabulary.Length)]);
                if (rng.Next(8) == 0)
                {
                    line.Append(rng.Next(10_000));
                }

                line.Append(separators[rng.Next(separators.Length)]);
            }

            line.Append('\n');
            var bytes = Encoding.ASCII.GetBytes(line.ToString());
            int n = Math.Min(bytes.Length, destination.Length - written);
            bytes.AsSpan(0, n).CopyTo(destination[written..]);
            written += n;
        }
    }
}
