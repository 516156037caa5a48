namespace Haven.Testing;

/// <summary>Seeded file contents for tests that need volume rather than variety.</summary>
public static class TestData
{
    /// <summary>Seeded random (incompressible) bytes.</summary>
    public static byte[] Bytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Writes <paramref name="count"/> files of <paramref name="size"/> random (incompressible, unique) bytes.</summary>
    public static void WriteRandomFiles(string directory, int count, int size, int seed, string prefix = "file-")
    {
        var rng = new Random(seed);
        var buffer = new byte[size];
        for (int i = 0; i < count; i++)
        {
            rng.NextBytes(buffer);
            File.WriteAllBytes(Path.Combine(directory, $"{prefix}{i:D4}.bin"), buffer);
        }
    }
}
