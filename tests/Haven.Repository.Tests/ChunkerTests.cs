using FsCheck;
using FsCheck.Fluent;
using Haven.Repository.Chunking;
using Xunit;

namespace Haven.Repository.Tests;

public class ChunkerTests
{
    private static readonly ChunkerParameters Small = new(256, 1024, 4096);
    private static readonly byte[] KeyA = Enumerable.Repeat((byte)1, 32).ToArray();
    private static readonly byte[] KeyB = Enumerable.Repeat((byte)2, 32).ToArray();

    private static List<int> Split(ContentDefinedChunker chunker, byte[] data)
    {
        var lengths = new List<int>();
        int pos = 0;
        while (pos < data.Length)
        {
            int cut = chunker.FindCut(data.AsSpan(pos), isFinal: true);
            Assert.True(cut > 0);
            lengths.Add(cut);
            pos += cut;
        }

        return lengths;
    }

    private static byte[] Random(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public void ChunksCoverTheInputAndRespectTheBounds()
    {
        var chunker = new ContentDefinedChunker(KeyA, Small);
        Prop.ForAll(Gen.Choose(0, 40_000).Zip(Gen.Choose(0, int.MaxValue)).ToArbitrary(), t =>
        {
            var data = Random(t.Item1, t.Item2);
            var lengths = Split(chunker, data);
            Assert.Equal(data.Length, lengths.Sum());
            for (int i = 0; i < lengths.Count; i++)
            {
                Assert.True(lengths[i] <= Small.MaxSize);
                if (i < lengths.Count - 1)
                {
                    Assert.True(lengths[i] > Small.MinSize);
                }
            }
        }).QuickCheckThrowOnFailure();
    }

    [Fact]
    public void StreamingInPiecesGivesTheSameCutsAsOneShot()
    {
        var chunker = new ContentDefinedChunker(KeyA, Small);
        Prop.ForAll(Gen.Choose(1, 30_000).Zip(Gen.Choose(0, int.MaxValue)).ToArbitrary(), t =>
        {
            var data = Random(t.Item1, t.Item2);
            var expected = Split(chunker, data);
            // Feed growing prefixes as a reader would: -1 means "need more".
            var actual = new List<int>();
            int start = 0, available = 0;
            var rng = new Random(t.Item2);
            while (start < data.Length)
            {
                available = Math.Min(data.Length, available + rng.Next(1, 3000));
                bool final = available == data.Length;
                int cut = chunker.FindCut(data.AsSpan(start, available - start), final);
                if (cut < 0)
                {
                    Assert.False(final);
                    continue;
                }

                actual.Add(cut);
                start += cut;
                available = Math.Max(available, start);
            }

            Assert.Equal(expected, actual);
        }).QuickCheckThrowOnFailure();
    }

    [Fact]
    public void AnInsertionOnlyDisturbsNearbyChunks()
    {
        var chunker = new ContentDefinedChunker(KeyA, Small);
        var data = Random(200_000, 7);
        var shifted = new byte[] { 1, 2, 3, 4, 5 }.Concat(data).ToArray();
        var a = Boundaries(Split(chunker, data), 0);
        var b = Boundaries(Split(chunker, shifted), -5);
        int shared = a.Intersect(b).Count();
        Assert.True(shared >= a.Count - 3, $"only {shared} of {a.Count} boundaries survived a 5-byte insertion");
    }

    private static HashSet<long> Boundaries(List<int> lengths, long shift)
    {
        var set = new HashSet<long>();
        long pos = shift;
        foreach (var l in lengths)
        {
            pos += l;
            set.Add(pos);
        }

        return set;
    }

    [Fact]
    public void DifferentKeysCutDifferently()
    {
        var data = Random(100_000, 3);
        var a = Split(new ContentDefinedChunker(KeyA, Small), data);
        var b = Split(new ContentDefinedChunker(KeyB, Small), data);
        Assert.NotEqual(a, b);
    }

    [Fact]
    public void MeanChunkSizeIsNearTheAverage()
    {
        // The default parameters on 64 MiB of random data: the mean must sit between min and max and near avg.
        var chunker = new ContentDefinedChunker(KeyA, ChunkerParameters.Default);
        var lengths = Split(chunker, Random(64 * 1024 * 1024, 11));
        double mean = lengths.Take(lengths.Count - 1).Average();
        Assert.InRange(mean, 0.8 * 1024 * 1024, 1.6 * 1024 * 1024);
    }

    [Fact]
    public void ShortInputsAreOneChunk()
    {
        var chunker = new ContentDefinedChunker(KeyA, Small);
        Assert.Equal(0, chunker.FindCut([], isFinal: true));
        Assert.Equal(100, chunker.FindCut(new byte[100], isFinal: true));
        Assert.Equal(-1, chunker.FindCut(new byte[100], isFinal: false));
    }

    [Fact]
    public void InvalidParametersAreRefused()
    {
        Assert.Throws<Haven.Core.HavenException>(() => new ContentDefinedChunker(KeyA, new ChunkerParameters(1024, 1000, 4096)));
        Assert.Throws<Haven.Core.HavenException>(() => new ContentDefinedChunker(KeyA, new ChunkerParameters(4096, 1024, 8192)));
    }
}
